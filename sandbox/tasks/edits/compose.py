"""Edit kinds ``compose2`` / ``compose3``: two or three single edits of distinct kinds in a row.

Instruction: the sub-instructions joined by ``; then ``, e.g. ``rename variable `n` to
`tally`; then in `return x + 1`, change `+` to `-```. Each sub-instruction is
content-addressed against the text *as left by the previous step*, so the steps are applied in
the order given.

Design choices:

* **Distinct kinds**, drawn in random order from the single kinds (so two renames of one name,
  or a literal changed back, cannot cancel); a kind with no fitting edit at its step is
  replaced by another.
* **Independent steps.** A step may not change, nor anchor on, a line an earlier step changed
  or anchored on (lines are followed through the steps with ``difflib``). Without this rule
  compositions degenerate into "insert `x = 0`; then rename `x` ..." or "insert ... before
  `return y`; then delete `return y`"; with it, the net diff is the union of the steps' diffs.
  A step that breaks the rule is redrawn (up to three times per kind).
* Every step is verified by its own kind's verifier on its own (before, after). The composite
  verifier re-checks the chain: distinct kinds of the right number, each step verifies, each
  starts where the previous ended, the steps are independent, the last ends at ``after``, and
  ``after != before``.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping

from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.names import TRAIN, NamePool
from sandbox.tasks.edits.source import lines_matching

JOIN = "; then "
_TRIES = 3


def _anchor_line(text: str, edit: Edit) -> int | None:
    """0-based index of the line a step anchors on in ``text`` (None if it has no line anchor)."""
    anchor = edit.params.get("anchor")
    if not isinstance(anchor, str) or edit.kind == "add_param":
        return None
    hits = lines_matching(text, anchor)
    return hits[0] - 1 if len(hits) == 1 else None


def footprint(before: str, after: str, edit: Edit, touched: list[bool]) -> list[bool] | None:
    """Flags of the lines of ``after`` that this or an earlier step changed or anchored on;
    None when this step changes or anchors on a line an earlier step already flagged."""
    a, b = before.split("\n"), after.split("\n")
    anchor = _anchor_line(before, edit)
    if anchor is not None and touched[anchor]:
        return None
    out = [False] * len(b)
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out[j1:j2] = touched[i1:i2]
            continue
        if any(touched[i1:i2]):
            return None
        out[j1:j2] = [True] * (j2 - j1)
    after_anchor = _anchor_line(after, edit)
    if after_anchor is not None:
        out[after_anchor] = True
    return out


def generate(n: int, src: str, rng: random.Random, names: NamePool = TRAIN, *,
             singles: Mapping) -> Edit | None:
    pool = sorted(singles)
    rng.shuffle(pool)
    subs: list[Edit] = []
    cur = src
    touched = [False] * len(src.split("\n"))
    for kind in pool:
        if len(subs) == n:
            break
        for _ in range(_TRIES):
            edit = singles[kind].generate(cur, rng, names)
            if edit is None:
                break
            if edit.after == cur or not singles[kind].verify(cur, edit.after, edit):
                continue
            flags = footprint(cur, edit.after, edit, touched)
            if flags is None:
                continue
            subs.append(edit)
            cur, touched = edit.after, flags
            break
    if len(subs) < n or cur == src:
        return None
    return Edit(f"compose{n}", JOIN.join(e.instruction for e in subs), cur, {"n": n}, tuple(subs))


def verify(n: int, before: str, after: str, edit: Edit, *, singles: Mapping) -> bool:
    subs = edit.subs
    kinds = [s.kind for s in subs]
    if len(subs) != n or len(set(kinds)) != n or any(k not in singles for k in kinds):
        return False
    if edit.instruction != JOIN.join(s.instruction for s in subs) or after == before:
        return False
    cur = before
    touched = [False] * len(before.split("\n"))
    for s in subs:
        if not singles[s.kind].verify(cur, s.after, s):
            return False
        touched = footprint(cur, s.after, s, touched)
        if touched is None:
            return False
        cur = s.after
    return cur == after
