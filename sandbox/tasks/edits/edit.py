"""The :class:`Edit` record every generator returns, and checks shared by the verifiers.

An edit kind is a pair of functions (registered in :mod:`sandbox.tasks.edits.kinds`):

* ``generate(func_src, rng, names=TRAIN) -> Edit | None``: pick a random applicable edit
  of ``func_src`` with ``rng`` (a :class:`random.Random`), apply it by span substitution on the
  text, and return it; None when the function offers no applicable edit.
* ``verify(before, after, edit) -> bool``: True only when ``after`` is exactly ``before``
  transformed as ``edit.params`` says. Each verifier checks two things independently of how the
  generator built the text: (1) the *AST* of ``after`` equals the AST of ``before`` with the
  intended transformation applied on the tree (``ast.dump`` without positions), and (2) the
  *text* changed only where the transformation must change it (one token, whole lines, one
  insertion, or the renamed words), so formatting and comments elsewhere are unchanged.

Design choices:

* ``params`` hold the content the instruction names (old / new text, anchor line, ...),
  never line numbers; a verifier re-locates the target from them in ``before`` and requires the
  location to be unique, which is what makes the instruction unambiguous.
* ``Edit`` is frozen and JSON-able (:meth:`Edit.to_json`), compositions keep their sub-edits
  (each with its own intermediate ``after``).
"""

from __future__ import annotations

import re
import tokenize
from dataclasses import dataclass, field

from sandbox.tasks.edits.source import tokens


@dataclass(frozen=True)
class Edit:
    kind: str  # "rename", ..., "compose2", "compose3"
    instruction: str  # natural language, content-addressed
    after: str  # the whole edited function
    params: dict = field(default_factory=dict)  # what the instruction names (kind-specific)
    subs: tuple[Edit, ...] = ()  # sub-edits of a composition, in order

    @property
    def sub_kinds(self) -> tuple[str, ...]:
        return tuple(s.kind for s in self.subs) if self.subs else (self.kind,)

    def to_json(self) -> dict:
        d = {"kind": self.kind, "instruction": self.instruction, "after": self.after,
             "params": self.params}
        if self.subs:
            d["subs"] = [s.to_json() for s in self.subs]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Edit:
        return cls(d["kind"], d["instruction"], d["after"], dict(d.get("params", {})),
                   tuple(cls.from_json(s) for s in d.get("subs", ())))


def comments(text: str) -> list[str] | None:
    """The comment tokens of ``text`` in order (None if it does not tokenize)."""
    try:
        return [t.string for t in tokens(text) if t.type == tokenize.COMMENT]
    except SyntaxError:
        return None


def is_word_substitution(before: str, after: str, old: str, new: str) -> bool:
    """True when ``after`` is ``before`` with some whole-word occurrences of ``old`` (not glued
    to identifier characters) replaced by ``new``, and nothing else changed."""
    pos_b = pos_a = 0
    for m in re.finditer(r"(?<!\w)" + re.escape(old) + r"(?!\w)", before):
        gap = before[pos_b:m.start()]
        if after[pos_a:pos_a + len(gap)] != gap:
            return False
        pos_a += len(gap)
        pos_b = m.end()
        for word in (new, old):
            if after.startswith(word, pos_a):
                nxt = after[pos_a + len(word): pos_a + len(word) + 1]
                if not (nxt and (nxt.isalnum() or nxt == "_")):
                    pos_a += len(word)
                    break
        else:
            return False
    return after[pos_a:] == before[pos_b:]


def one_token_replaced(before: str, after: str, start: int, end: int, new: str) -> bool:
    """``after == before`` with ``before[start:end]`` replaced by ``new``."""
    return after == before[:start] + new + before[end:]
