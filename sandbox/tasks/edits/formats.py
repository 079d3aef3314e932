"""Target formats of the code-edit task: how an edit is written, and how a written one is applied.

- ``whole``: the edited function itself. Its length is the function's, whatever the edit.
- ``udiff``: unified-diff hunks relative to the function (``sandbox.tasks.edits.udiff``),
  with line numbers and three lines of context.
- ``search_replace``: the old lines and their replacement, no line numbers (the format of
  Aider's and Claude Code's edit tools)::

      <<<<<<< SEARCH
      <old lines, exactly as in the function>
      =======
      <new lines>
      >>>>>>> REPLACE

  one block per changed region of a line diff, in order. Its output grows with the diff,
  not with the function, so an AR model writes far fewer tokens for a small edit. A block
  must be able to find its place: an insertion (no old lines) carries the line above it (or
  below, at the top) in both halves, and a block whose old lines occur more than once in
  the function grows by context lines until they occur once.

``render(before, after, fmt)`` writes an edit; ``apply(before, output, fmt)`` turns a model's
output back into the edited function, ``(function, applied)``, where a block whose old lines
are not found (or are found twice), or a malformed block, is a failed apply (``None``,
False), never an exception: the metrics then count the item as failed.
"""

from __future__ import annotations

import difflib

from sandbox.tasks.edits.udiff import apply_udiff, udiff

FORMATS = ("whole", "udiff", "search_replace")
SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _count(haystack: list[str], needle: list[str]) -> int:
    n = len(needle)
    return sum(1 for i in range(len(haystack) - n + 1) if haystack[i:i + n] == needle) if n else 0


def search_replace(before: str, after: str) -> str:
    """The ``search_replace`` blocks that turn ``before`` into ``after`` (module doc). Blocks
    whose context would touch each other are merged, so they apply one after another."""
    a, b = _lines(before), _lines(after)
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    to_b = {}  # line index of `before` -> the matching index of `after`, at every block edge
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            to_b.update({i1 + k: j1 + k for k in range(i2 - i1 + 1)})
        else:
            to_b.setdefault(i1, j1)
            to_b[i2] = j2
    spans = []
    for tag, i1, i2, _, _ in ops:
        if tag == "equal":
            continue
        lo, hi = i1, i2
        if lo == hi:  # an insertion: anchor it on a neighbouring line
            lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
        spans.append([lo, hi])
    merged: list[list[int]] = []
    for span in spans:
        while True:
            lo, hi = span
            while _count(a, a[lo:hi]) != 1 and (lo > 0 or hi < len(a)):  # grow until unique
                lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
            span = [lo, hi]
            if merged and lo <= merged[-1][1]:  # touches the previous block: one block
                span = [min(merged.pop()[0], lo), hi]
                continue
            break
        merged.append(span)
    blocks = [[SEARCH, *a[lo:hi], DIVIDER, *b[to_b[lo]:to_b[hi]], REPLACE] for lo, hi in merged]
    return "\n".join("\n".join(x) for x in blocks)


def _parse(text: str) -> list[tuple[list[str], list[str]]] | None:
    """[(old lines, new lines)] of the blocks, or None when the text is not well formed."""
    out, lines, i = [], _lines(text.strip("\n")), 0
    if lines == [""]:
        return out
    while i < len(lines):
        if lines[i] != SEARCH:
            return None
        try:
            d = lines.index(DIVIDER, i + 1)
            r = lines.index(REPLACE, d + 1)
        except ValueError:
            return None
        out.append((lines[i + 1:d], lines[d + 1:r]))
        i = r + 1
    return out


def apply_search_replace(before: str, text: str) -> str | None:
    """``before`` with every block applied in order; None when a block's old lines are not
    found exactly once, or the text is malformed."""
    if not isinstance(text, str):
        return None
    blocks = _parse(text)
    if blocks is None:
        return None
    cur = _lines(before)
    for old, new in blocks:
        if not old or _count(cur, old) != 1:
            return None
        i = next(k for k in range(len(cur) - len(old) + 1) if cur[k:k + len(old)] == old)
        cur = cur[:i] + new + cur[i + len(old):]
    return "\n".join(cur)


def render(before: str, after: str, fmt: str) -> str:
    """The edit before -> after written in ``fmt``."""
    if fmt == "whole":
        return after
    if fmt == "udiff":
        return udiff(before, after)
    if fmt == "search_replace":
        return search_replace(before, after)
    raise ValueError(f"unknown edit format '{fmt}' (choose one of {', '.join(FORMATS)})")


def apply(before: str, output: str, fmt: str) -> tuple[str | None, bool | None]:
    """(edited function or None, applied or None for ``whole``) of a model output in ``fmt``."""
    if fmt == "whole":
        return output, None
    if fmt == "udiff":
        out = apply_udiff(before, output)
    elif fmt == "search_replace":
        out = apply_search_replace(before, output)
    else:
        raise ValueError(f"unknown edit format '{fmt}' (choose one of {', '.join(FORMATS)})")
    return out, out is not None
