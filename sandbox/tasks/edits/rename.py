"""Edit kind ``rename``: rename a local variable or a parameter.

Instruction: ``rename variable `count` to `tally``` (or ``rename parameter ...``).

Design choices:

* The name is one of :func:`~sandbox.tasks.edits.scopes.rename_candidates` (its docstring lists
  the safety rules: no shadowing in nested scopes, no ``global`` / ``nonlocal``, nothing
  evaluated in the enclosing scope). The new name comes from the given pool and is never a
  keyword, builtin or identifier already spelled in the function.
* Only ``ast.Name`` / ``ast.arg`` spans are rewritten; each span's text is checked to be the
  old name first (this guards against wrong positions inside f-strings on older Pythons).
* The verifier renames on the tree (every ``Name`` / ``arg`` spelled ``old``), compares the
  dump with ``after``'s, and checks the text is ``before`` with whole-word occurrences of
  ``old`` replaced and the comments unchanged: a rename inside a comment, string, keyword
  argument or attribute therefore fails one of the two checks.
"""

from __future__ import annotations

import ast
import random

from sandbox.tasks.edits.edit import Edit, comments, is_word_substitution
from sandbox.tasks.edits.names import TRAIN, NamePool, is_reserved
from sandbox.tasks.edits.scopes import identifiers, occurrences, rename_candidates
from sandbox.tasks.edits.source import SourceText, parse, parse_function, replace_spans, tokens

KIND = "rename"


def _spans(st: SourceText, fn, name: str) -> list[tuple[int, int, str]] | None:
    out = []
    for node in occurrences(fn, name):
        start = st.offset(node.lineno, node.col_offset)
        end = start + len(name)
        if st.text[start:end] != name:
            return None
        out.append((start, end))
    return out


def make(src: str, old: str, new: str) -> Edit | None:
    """The rename of ``old`` to ``new`` in ``src``, or None when the rules do not allow it."""
    parsed = parse_function(src)
    if parsed is None or is_reserved(new) or not new.isidentifier():
        return None
    tree, fn = parsed
    cands = rename_candidates(fn)
    if old not in cands or new in identifiers(tree, tokens(src)):
        return None
    spans = _spans(SourceText(src), fn, old)
    if not spans:
        return None
    return Edit(KIND, f"rename {cands[old]} `{old}` to `{new}`",
                replace_spans(src, [(s, e, new) for s, e in spans]),
                {"old": old, "new": new, "role": cands[old]})


def generate(src: str, rng: random.Random, names: NamePool = TRAIN) -> Edit | None:
    parsed = parse_function(src)
    if parsed is None:
        return None
    tree, fn = parsed
    order = sorted(rename_candidates(fn))
    rng.shuffle(order)
    taken = identifiers(tree, tokens(src))
    for old in order:
        new = names.fresh(rng, taken)
        if new is None:
            return None
        edit = make(src, old, new)
        if edit is not None:
            return edit
    return None


class _Renamer(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            node.id = self.new
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        if node.arg == self.old:
            node.arg = self.new
        self.generic_visit(node)
        return node


def verify(before: str, after: str, edit: Edit) -> bool:
    old, new = edit.params.get("old"), edit.params.get("new")
    if not (isinstance(old, str) and isinstance(new, str)) or old == new:
        return False
    if not new.isidentifier() or is_reserved(new):
        return False
    parsed = parse_function(before)
    after_tree = parse(after)
    if parsed is None or after_tree is None:
        return False
    tree, fn = parsed
    if old not in rename_candidates(fn):
        return False
    try:
        if new in identifiers(tree, tokens(before)):
            return False
    except SyntaxError:
        return False
    expected = _Renamer(old, new).visit(tree)
    if ast.dump(expected) != ast.dump(after_tree):
        return False
    return is_word_substitution(before, after, old, new) and comments(before) == comments(after)
