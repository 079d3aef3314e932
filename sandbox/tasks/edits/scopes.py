"""Which names of a function can be renamed safely, and which identifiers it already uses.

A rename rewrites *every* ``ast.Name`` / ``ast.arg`` spelled ``old`` inside the function, and
nothing else. That is exactly a correct rename only for names that pass these rules, so
:func:`rename_candidates` admits a name only when:

* it is bound in the function's own scope: a parameter, or an ``ast.Name`` in store / del
  context outside every nested scope;
* it is not bound in any nested scope (nested ``def`` / ``async def`` / ``lambda`` / ``class``
  body / comprehension: their parameters, targets and assignments), so no occurrence can
  belong to another scope (shadowing);
* it is not declared ``global`` / ``nonlocal`` anywhere in the function, and not bound by a
  construct whose name is a plain string with no ``ast`` span of its own (``import`` aliases,
  ``except ... as``, ``match`` captures, nested ``def`` / ``class`` names);
* it does not appear in the function's decorators, default values or annotations: those are
  evaluated in the *enclosing* scope, so a same-spelled name there is a different variable;
* it is not the function's own name, ``self``, ``cls``, ``_`` or a double-underscore name
  (class-private mangling).

Keyword names in calls (``f(name=1)``), attributes (``obj.name``), strings, f-string text,
comments and docstrings are never ``ast.Name`` / ``ast.arg`` nodes, so they are never touched.
"""

from __future__ import annotations

import ast

from sandbox.tasks.edits.source import Tok

_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _arg_nodes(args: ast.arguments) -> list[ast.arg]:
    out = list(args.posonlyargs) + list(args.args)
    if args.vararg:
        out.append(args.vararg)
    out += list(args.kwonlyargs)
    if args.kwarg:
        out.append(args.kwarg)
    return out


def outer_expressions(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.AST]:
    """Parts of a definition evaluated in the enclosing scope: decorators, defaults, annotations."""
    out: list[ast.AST] = list(getattr(fn, "decorator_list", []))
    out += [d for d in fn.args.defaults] + [d for d in fn.args.kw_defaults if d is not None]
    out += [a.annotation for a in _arg_nodes(fn.args) if a.annotation is not None]
    if getattr(fn, "returns", None) is not None:
        out.append(fn.returns)
    return out


def _names_in(nodes) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


class _Binder:
    """Collects own-scope bindings, nested-scope bindings and blocked names of a function."""

    def __init__(self):
        self.own: set[str] = set()
        self.nested: set[str] = set()
        self.blocked: set[str] = set()

    def bind(self, name: str, nested: bool) -> None:
        (self.nested if nested else self.own).add(name)

    def visit(self, node: ast.AST, nested: bool) -> None:
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                self.bind(node.id, nested)
            return
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            self.blocked.update(node.names)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                self.blocked.add((a.asname or a.name).split(".")[0])
            return
        if isinstance(node, ast.ExceptHandler) and node.name:
            self.blocked.add(node.name)
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            self.blocked.add(node.name)
        if isinstance(node, ast.MatchMapping) and node.rest:
            self.blocked.add(node.rest)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if not isinstance(node, ast.Lambda):
                self.blocked.add(node.name)
            for part in outer_expressions(node):
                self.visit(part, nested)
            for a in _arg_nodes(node.args):
                self.nested.add(a.arg)
            body = node.body if isinstance(node.body, list) else [node.body]
            for stmt in body:
                self.visit(stmt, True)
            return
        if isinstance(node, ast.ClassDef):
            self.blocked.add(node.name)
            for part in list(node.decorator_list) + list(node.bases) + list(node.keywords):
                self.visit(part, nested)
            for stmt in node.body:
                self.visit(stmt, True)
            return
        if isinstance(node, _COMPS):
            gens = node.generators
            self.visit(gens[0].iter, nested)  # evaluated in the enclosing scope
            for i, g in enumerate(gens):
                self.visit(g.target, True)
                if i:
                    self.visit(g.iter, True)
                for cond in g.ifs:
                    self.visit(cond, True)
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.visit(part, True)
            return
        for child in ast.iter_child_nodes(node):
            self.visit(child, nested)


def rename_candidates(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Renamable names of ``fn`` (module docstring) -> ``'parameter'`` or ``'variable'``."""
    params = [a.arg for a in _arg_nodes(fn.args)]
    b = _Binder()
    for stmt in fn.body:
        b.visit(stmt, False)
    own = set(params) | b.own
    blocked = b.blocked | b.nested | _names_in(outer_expressions(fn)) | {fn.name, "self", "cls", "_"}
    return {n: ("parameter" if n in params else "variable")
            for n in sorted(own - blocked) if not n.startswith("__")}


def occurrences(fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> list[ast.AST]:
    """Every ``ast.Name`` and ``ast.arg`` spelled ``name`` in ``fn`` (positions sorted)."""
    out = [n for n in ast.walk(fn)
           if (isinstance(n, ast.Name) and n.id == name) or (isinstance(n, ast.arg) and n.arg == name)]
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def identifiers(tree: ast.AST, toks: list[Tok] | None = None) -> set[str]:
    """Every identifier spelled in ``tree`` (names, attributes, keywords, aliases, ...) and
    every NAME token in ``toks``: a new name must be none of these."""
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.keyword) and n.arg:
            out.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.update((n.asname or n.name).split("."))
            out.update(n.name.split("."))
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
        elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            out.add(n.rest)
    if toks is not None:
        out.update(t.string for t in toks if t.type == 1)  # tokenize.NAME
    return out
