"""Edit kind ``swap_op``: swap one binary, comparison, boolean or augmented-assignment operator.

Instruction: ``in `return a + b`, change `+` to `-```.

Design choices:

* Pairs (both directions): ``+ -``, ``* /``, ``& |``, ``<< >>``; ``< <=``, ``> >=``,
  ``== !=``, ``is`` / ``is not``, ``in`` / ``not in``; ``and or``; ``+= -=``, ``*= /=``,
  ``|= &=``. Swaps within a pair keep the precedence, except ``and`` / ``or``: those are only
  swapped in a two-operand ``BoolOp`` and only when the result parses to the same tree shape.
* The operator's tokens are found between the operand nodes' spans (parentheses, line breaks
  and comments skipped). The anchor is always the operator's line, which must be unique in
  the function and hold the operator's token sequence once (so ``for x in y if x in z`` is
  never an anchor for ``in``; ``x - -1`` never for ``-``).
* The verifier re-locates the operator from (anchor, old), requires ``after`` to be ``before``
  with just that text replaced by ``new``, and compares the ASTs with that operator swapped on
  the tree.
"""

from __future__ import annotations

import ast
import random
import tokenize
from dataclasses import dataclass

from sandbox.tasks.edits.edit import Edit, one_token_replaced
from sandbox.tasks.edits.names import TRAIN, NamePool
from sandbox.tasks.edits.source import SourceText, Tok, lines_matching, parse, tokens, unique_line

KIND = "swap_op"

_PAIRS = [
    ("+", ast.Add, "-", ast.Sub), ("*", ast.Mult, "/", ast.Div), ("&", ast.BitAnd, "|", ast.BitOr),
    ("<<", ast.LShift, ">>", ast.RShift),
    ("<", ast.Lt, "<=", ast.LtE), (">", ast.Gt, ">=", ast.GtE), ("==", ast.Eq, "!=", ast.NotEq),
    ("is", ast.Is, "is not", ast.IsNot), ("in", ast.In, "not in", ast.NotIn),
    ("and", ast.And, "or", ast.Or),
]
_AUG = [("+=", ast.Add, "-=", ast.Sub), ("*=", ast.Mult, "/=", ast.Div), ("|=", ast.BitOr, "&=", ast.BitAnd)]

#: operator text -> (its ast class, partner text, partner ast class)
SWAPS: dict[str, tuple[type, str, type]] = {}
AUG_SWAPS: dict[str, tuple[type, str, type]] = {}
for _table, _pairs in ((SWAPS, _PAIRS), (AUG_SWAPS, _AUG)):
    for _a, _ca, _b, _cb in _pairs:
        _table[_a] = (_ca, _b, _cb)
        _table[_b] = (_cb, _a, _ca)
_CLASS_TEXT = {v[0]: k for k, v in SWAPS.items()}
_AUG_CLASS_TEXT = {v[0]: k for k, v in AUG_SWAPS.items()}
_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT}


@dataclass
class Site:
    node: ast.AST  # BinOp, Compare, BoolOp or AugAssign
    index: int  # which op of a Compare
    start: int  # string offsets of the operator text
    end: int
    text: str  # "+", "not in", ...
    line: int


def _between(toks: list[Tok], start: int, end: int) -> list[Tok]:
    return [t for t in toks if t.start >= start and t.end <= end and t.type not in _SKIP
            and t.string not in ("(", ")")]


def op_sites(tree: ast.AST, src: str, toks: list[Tok]) -> list[Site]:
    """Every swappable operator occurrence of ``tree`` with its text span."""
    st = SourceText(src)
    out: list[Site] = []

    def add(node, index, left, right, table):
        between = _between(toks, st.span(left)[1], st.span(right)[0])
        if not between:
            return
        text = " ".join(t.string for t in between)
        if src[between[0].start:between[-1].end] != text:
            return
        op = node.ops[index] if isinstance(node, ast.Compare) else node.op
        if table.get(type(op)) != text:
            return
        out.append(Site(node, index, between[0].start, between[-1].end, text, between[0].line))

    for n in ast.walk(tree):
        if isinstance(n, ast.BinOp):
            add(n, 0, n.left, n.right, _CLASS_TEXT)
        elif isinstance(n, ast.Compare):
            for i in range(len(n.ops)):
                add(n, i, n.left if i == 0 else n.comparators[i - 1], n.comparators[i], _CLASS_TEXT)
        elif isinstance(n, ast.BoolOp) and len(n.values) == 2:
            add(n, 0, n.values[0], n.values[1], _CLASS_TEXT)
        elif isinstance(n, ast.AugAssign):
            add(n, 0, n.target, n.value, _AUG_CLASS_TEXT)
    return out


def _swap(site: Site) -> str:
    table = AUG_SWAPS if isinstance(site.node, ast.AugAssign) else SWAPS
    _, new_text, new_cls = table[site.text]
    if isinstance(site.node, ast.Compare):
        site.node.ops[site.index] = new_cls()
    else:
        site.node.op = new_cls()
    return new_text


def _count_on_line(toks: list[Tok], line: int, text: str) -> int:
    """Occurrences of the token sequence ``text.split()`` among the tokens of ``line``."""
    words = text.split()
    strs = [t.string for t in toks if t.line == line and t.type not in _SKIP]
    return sum(strs[i:i + len(words)] == words for i in range(len(strs)))


def generate(src: str, rng: random.Random, names: NamePool = TRAIN) -> Edit | None:
    tree = parse(src)
    if tree is None:
        return None
    toks = tokens(src)
    sites = op_sites(tree, src, toks)
    rng.shuffle(sites)
    for site in sites:
        anchor = unique_line(src, site.line)
        if anchor is None or _count_on_line(toks, site.line, site.text) != 1:
            continue
        saved = site.node.ops[site.index] if isinstance(site.node, ast.Compare) else site.node.op
        new = _swap(site)
        after = src[:site.start] + new + src[site.end:]
        after_tree = parse(after)
        if after_tree is None or ast.dump(after_tree) != ast.dump(tree):
            # precedence changed (and / or): undo the swap on the tree and try another site
            if isinstance(site.node, ast.Compare):
                site.node.ops[site.index] = saved
            else:
                site.node.op = saved
            continue
        return Edit(KIND, f"in `{anchor}`, change `{site.text}` to `{new}`", after,
                    {"old": site.text, "new": new, "anchor": anchor})
    return None


def verify(before: str, after: str, edit: Edit) -> bool:
    old, new, anchor = (edit.params.get(k) for k in ("old", "new", "anchor"))
    if not all(isinstance(x, str) for x in (old, new, anchor)):
        return False
    if old not in SWAPS and old not in AUG_SWAPS:
        return False
    tree = parse(before)
    after_tree = parse(after)
    if tree is None or after_tree is None:
        return False
    lines = lines_matching(before, anchor)
    if len(lines) != 1:
        return False
    toks = tokens(before)
    if _count_on_line(toks, lines[0], old) != 1:
        return False
    hits = [s for s in op_sites(tree, before, toks) if s.line == lines[0] and s.text == old]
    if len(hits) != 1:
        return False
    site = hits[0]
    if _swap(site) != new:
        return False
    if not one_token_replaced(before, after, site.start, site.end, new):
        return False
    return ast.dump(tree) == ast.dump(after_tree)
