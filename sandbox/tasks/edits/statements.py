"""Edit kinds ``delete_stmt`` and ``insert_stmt``: remove or add whole-line statements.

Instructions: ``delete the statement `x = 1```, ``delete the statement that starts with
`foo(a,```, ``delete the `if not x:` block``; ``insert `assert n is not None` after
`n = len(s)```, ``insert `print(n)` before `return n```, ``insert `tally = None` at the start
of the body``, and for a two-line template ``insert `if n is None:` with body
`raise ValueError('n must not be None')` after ...``.

Design choices:

* Only statements that own their lines (nothing but spaces before them, nothing but a comment
  after them) are deleted or used as anchors, so an edit is a pure line deletion / insertion
  and the rest of the text is untouched. A deleted statement keeps its trailing comment
  company: the comment on its last line goes with it, comment lines above it stay.
* A statement is deletable if its body keeps at least one statement, it is not a docstring and
  not decorated; its first line (stripped) must be unique in the function: that is the anchor.
  A compound statement goes as a whole block (``if`` with its ``else``, ``try`` with handlers).
* Inserted statements come from a few templates over the function's own names (parameters and
  locals) and fresh names of the pool: ``{new} = None``, ``{new} = []``, ``{new} = {v}``,
  ``assert {v} is not None``, ``print({v})``, and two-line guards ``if {v} is None: raise
  ValueError(...)`` / ``if not {v}: return``. Nested lines use the function's own indentation
  unit. Positions: after or before a unique single-line statement, or at the start of the body
  (after the docstring).
* Both kinds must leave a function that compiles. Verifiers re-locate the anchor, compare the
  ASTs with the statement removed / inserted on the tree, and require the text to be ``before``
  with exactly those lines removed / inserted.
"""

from __future__ import annotations

import ast
import random
import textwrap

from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.names import TRAIN, NamePool
from sandbox.tasks.edits.scopes import identifiers, rename_candidates
from sandbox.tasks.edits.source import (
    SourceText,
    compiles,
    lines_matching,
    parse,
    parse_function,
    tokens,
    unique_line,
)

DELETE = "delete_stmt"
INSERT = "insert_stmt"

_LINE_TEMPLATES = ("{new} = None", "{new} = []", "{new} = {v}", "assert {v} is not None", "print({v})")
_GUARDS = (("if {v} is None:", "raise ValueError('{v} must not be None')"), ("if not {v}:", "return"))
_NO_VAR_TEMPLATES = ("{new} = None", "{new} = []", "{new} = 0")
_ENDS = (ast.Return, ast.Raise, ast.Break, ast.Continue)


def _bodies(fn: ast.AST):
    """Every statement list inside ``fn`` (its own body included): ``(owner, list)``."""
    for node in ast.walk(fn):
        for name in ("body", "orelse", "finalbody"):
            seq = getattr(node, name, None)
            if isinstance(seq, list) and seq and isinstance(seq[0], ast.stmt):
                yield node, seq  # also reaches except handlers and match cases


def _is_docstring(owner: ast.AST, seq: list, i: int) -> bool:
    return (i == 0 and isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and isinstance(seq[0], ast.Expr) and isinstance(seq[0].value, ast.Constant)
            and isinstance(seq[0].value.value, str))


def _owns_lines(st: SourceText, node: ast.stmt) -> bool:
    """Nothing but spaces before the statement on its first line, and nothing but spaces or a
    comment after it on its last line."""
    if getattr(node, "decorator_list", None):
        return False
    start, end = st.span(node)
    head = st.text[st.starts[node.lineno - 1]:start]
    tail = st.line(node.end_lineno)[end - st.starts[node.end_lineno - 1]:].strip()
    return not head.strip() and (not tail or tail.startswith("#"))


def _has_body(node: ast.stmt) -> bool:
    return isinstance(getattr(node, "body", None), list) or isinstance(node, ast.Match)


def _statements(fn) -> list[tuple[ast.AST, list, int]]:
    return [(owner, seq, i) for owner, seq in _bodies(fn) for i in range(len(seq))]


def _remove_lines(text: str, first: int, last: int) -> str:
    lines = text.split("\n")
    return "\n".join(lines[: first - 1] + lines[last:])


# ----------------------------------------------------------------------------- delete


def generate_delete(src: str, rng: random.Random, names: NamePool = TRAIN) -> Edit | None:
    parsed = parse_function(src)
    if parsed is None:
        return None
    _, fn = parsed
    st = SourceText(src)
    cands = [(o, s, i) for o, s, i in _statements(fn)
             if len(s) >= 2 and not _is_docstring(o, s, i) and _owns_lines(st, s[i])]
    rng.shuffle(cands)
    for _, seq, i in cands:
        node = seq[i]
        anchor = unique_line(src, node.lineno)
        if anchor is None:
            continue
        after = _remove_lines(src, node.lineno, node.end_lineno)
        if not compiles(after):
            continue
        if _has_body(node):
            what, instruction = "block", f"delete the `{anchor}` block"
        elif node.lineno == node.end_lineno:
            what, instruction = "statement", f"delete the statement `{anchor}`"
        else:
            what, instruction = "statement", f"delete the statement that starts with `{anchor}`"
        return Edit(DELETE, instruction, after, {"anchor": anchor, "what": what})
    return None


def _statement_at(fn, before: str, anchor: str):
    """The one statement (``(owner, list, index)``) that starts the unique ``anchor`` line."""
    lines = lines_matching(before, anchor)
    if len(lines) != 1:
        return None
    st = SourceText(before)
    hits = [(o, s, i) for o, s, i in _statements(fn)
            if s[i].lineno == lines[0] and _owns_lines(st, s[i])]
    return hits[0] if len(hits) == 1 else None


def _anchored(fn, src: str, anchor):
    """(owner, body, index) of the single-line, body-less statement whose text ``anchor``
    names (the only kind an insert may be placed next to), or None."""
    hit = _statement_at(fn, src, anchor) if isinstance(anchor, str) else None
    if hit is None:
        return None
    node = hit[1][hit[2]]
    return None if node.lineno != node.end_lineno or _has_body(node) else hit


def verify_delete(before: str, after: str, edit: Edit) -> bool:
    anchor, what = edit.params.get("anchor"), edit.params.get("what")
    parsed, after_tree = parse_function(before), parse(after)
    if not isinstance(anchor, str) or parsed is None or after_tree is None:
        return False
    tree, fn = parsed
    hit = _statement_at(fn, before, anchor)
    if hit is None:
        return False
    owner, seq, i = hit
    node = seq[i]
    if what != ("block" if _has_body(node) else "statement") or _is_docstring(owner, seq, i):
        return False
    if after != _remove_lines(before, node.lineno, node.end_lineno):
        return False
    del seq[i]
    return bool(seq) and ast.dump(tree) == ast.dump(after_tree)


# ----------------------------------------------------------------------------- insert


def _bound_before(fn, line: int) -> set[str]:
    """Names surely bound when a statement inserted at 1-based ``line`` runs: the parameters,
    names assigned by a top-level statement of the body that ends before it, and the targets of
    the ``for`` / ``with`` / ``except`` blocks that enclose it. (A name assigned only later, or
    in a branch that may not run, would be read before it is bound.)"""
    a = fn.args
    out = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, *([a.vararg] if a.vararg else []),
                           *([a.kwarg] if a.kwarg else [])]}

    def stores(node) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

    for st in fn.body:
        if st.end_lineno < line and not _has_body(st):  # a simple statement that has run
            out |= stores(st)
    for node in ast.walk(fn):
        if node is fn or not (getattr(node, "lineno", 0) < line <= getattr(node, "end_lineno", 0)):
            continue
        if isinstance(node, ast.For | ast.AsyncFor):
            out |= stores(node.target)
        elif isinstance(node, ast.With | ast.AsyncWith):
            out |= {n for item in node.items if item.optional_vars is not None
                    for n in stores(item.optional_vars)}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
    return out


def _usable_names(fn, line: int) -> list[str]:
    return sorted(set(rename_candidates(fn)) & _bound_before(fn, line))


def _new_statement(fn, tree, src: str, rng: random.Random, names: NamePool, line: int) -> list[str] | None:
    """Lines of a new statement to insert at 1-based ``line`` (nested lines indented by 4;
    re-indented on insertion); it reads only names bound there."""
    taken = identifiers(tree, tokens(src))
    new = names.fresh(rng, taken)
    if new is None:
        return None
    usable = _usable_names(fn, line)
    if not usable:
        return [rng.choice(_NO_VAR_TEMPLATES).format(new=new)]
    v = rng.choice(usable)
    if rng.random() < 0.25:
        head, body = rng.choice(_GUARDS)
        return [head.format(v=v), "    " + body.format(v=v)]
    return [rng.choice(_LINE_TEMPLATES).format(new=new, v=v)]


def _indent_unit(st: SourceText, fn) -> int:
    """Indentation width of the function body (4 when the body sits on the ``def`` line)."""
    first = fn.body[0]
    if first.lineno == fn.lineno:
        return 4
    return max(1, len(st.indent_of(first.lineno)) - len(st.indent_of(fn.lineno)))


def _insertion(fn, st: SourceText, src: str, where: str, anchor: str | None):
    """``(line index to insert before (0-based), indent)`` or None."""
    if where == "start":
        first = fn.body[0]
        start = st.offset(first.lineno, first.col_offset)
        if st.text[st.starts[first.lineno - 1]:start].strip():
            return None  # the body starts on the header's line
        if _is_docstring(fn, fn.body, 0):
            if not _owns_lines(st, first):
                return None
            return first.end_lineno, st.indent_of(first.lineno)
        line = min([d.lineno for d in getattr(first, "decorator_list", [])] + [first.lineno])
        return line - 1, st.indent_of(first.lineno)
    hit = _anchored(fn, src, anchor)
    if hit is None:
        return None
    owner, seq, i = hit
    node = seq[i]
    if where == "before" and _is_docstring(owner, seq, i):
        return None
    return (node.lineno - 1 if where == "before" else node.lineno), st.indent_of(node.lineno)


def _render(lines: list[str], indent: str, unit: int) -> list[str]:
    out = []
    for line in lines:
        body = line.lstrip(" ")
        depth = (len(line) - len(body)) // 4
        out.append(indent + " " * (unit * depth) + body)
    return out


def _describe(lines: list[str]) -> str:
    if len(lines) == 1:
        return f"`{lines[0]}`"
    return f"`{lines[0]}` with body `{lines[1].strip()}`"


def generate_insert(src: str, rng: random.Random, names: NamePool = TRAIN) -> Edit | None:
    parsed = parse_function(src)
    if parsed is None:
        return None
    tree, fn = parsed
    st = SourceText(src)
    positions = [("start", None)]
    for owner, seq, i in _statements(fn):
        node = seq[i]
        if node.lineno != node.end_lineno or _has_body(node) or not _owns_lines(st, node):
            continue
        anchor = unique_line(src, node.lineno)
        if anchor is None:
            continue
        if _is_docstring(owner, seq, i):
            continue  # "at the start of the body" says it
        if not isinstance(node, _ENDS):  # nothing after a return / raise / break / continue
            positions.append(("after", anchor))
        positions.append(("before", anchor))
    rng.shuffle(positions)
    unit = _indent_unit(st, fn)
    for where, anchor in positions:
        place = _insertion(fn, st, src, where, anchor)
        if place is None:
            continue
        index, indent = place
        stmt = _new_statement(fn, tree, src, rng, names, index + 1)
        if stmt is None:
            return None
        lines = src.split("\n")
        after = "\n".join(lines[:index] + _render(stmt, indent, unit) + lines[index:])
        if not compiles(after):
            continue
        if where == "start":
            doc = _is_docstring(fn, fn.body, 0)
            target = "at the start of the body" + (", after the docstring" if doc else "")
        else:
            target = f"{where} `{anchor}`"
        return Edit(INSERT, f"insert {_describe(stmt)} {target}", after,
                    {"stmt": "\n".join(stmt) + "\n", "where": where, "anchor": anchor})
    return None


def verify_insert(before: str, after: str, edit: Edit) -> bool:
    stmt, where, anchor = (edit.params.get(k) for k in ("stmt", "where", "anchor"))
    if not isinstance(stmt, str) or where not in ("start", "after", "before"):
        return False
    new = parse(stmt)
    parsed, after_tree = parse_function(before), parse(after)
    if new is None or len(new.body) != 1 or parsed is None or after_tree is None:
        return False
    tree, fn = parsed
    unit = _indent_unit(SourceText(before), fn)
    # the tree: the new statement at the named place
    if where == "start":
        seq, i = fn.body, (1 if _is_docstring(fn, fn.body, 0) else 0)
    else:
        hit = _anchored(fn, before, anchor)
        if hit is None:
            return False
        owner, seq, i = hit
        i += where == "after"
    seq.insert(i, new.body[0])
    if ast.dump(tree) != ast.dump(after_tree):
        return False
    # the text: ``before`` with one block of whole lines inserted, which dedents to ``stmt``
    b, a = before.split("\n"), after.split("\n")
    k = len(a) - len(b)
    if k != len(stmt.rstrip("\n").split("\n")):
        return False
    want = "\n".join(_render(stmt.rstrip("\n").split("\n"), "", unit))
    for j in range(len(b) + 1):
        if a[:j] != b[:j]:
            break
        if a[j + k:] == b[j:] and textwrap.dedent("\n".join(a[j:j + k])) == want:
            return True
    return False
