"""Edit kind ``add_param``: add one parameter to the function's signature.

Instructions: ``add parameter `limit` after `data```, ``add parameter `limit=None` after `b```
(a default is required after a parameter with a default), ``add parameter `limit` before
`a```, ``add parameter `limit` after `/```, ``add parameter `limit` before `*args```,
``add parameter `limit` as the only parameter``, ``add keyword-only parameter `limit=0` after
`*args``` or ``after `c``` (the last keyword-only parameter), and ``add keyword-only parameter `limit=None```
(when the function has no ``*``: a bare ``*`` is added too, before ``**kwargs`` if any).

Design choices:

* The parameter list is read from the tokens between the ``def``'s parentheses and split at
  top-level commas into segments (``a``, ``b: int = 1``, ``/``, ``*``, ``*args``,
  ``**kw``); the new text is one insertion, ``new, `` before a segment or ``, new`` after
  one, so annotations, defaults, comments and line breaks of the signature stay as they are.
* Positional slots lie anywhere among the positional segments (before ``/`` makes the new
  parameter positional-only). The new parameter gets a default exactly when a positional
  parameter before it has one (required), or, at random, when every positional parameter
  after it has one (allowed); keyword-only parameters get a default at random. Defaults are
  ``None``, ``False``, ``True``, ``0``, ``1`` or ``''``.
* The verifier rebuilds the expected ``ast.arguments`` from the instruction's content (name,
  default, anchor) and compares the whole tree, and checks that ``after`` is ``before`` with
  one contiguous insertion inside the parentheses.
"""

from __future__ import annotations

import ast
import copy
import random
import tokenize
from dataclasses import dataclass

from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.names import TRAIN, NamePool, is_reserved
from sandbox.tasks.edits.scopes import identifiers
from sandbox.tasks.edits.source import SourceText, Tok, parse, parse_function, tokens

KIND = "add_param"
DEFAULTS = ("None", "None", "None", "False", "True", "0", "1", "''")


@dataclass
class Segment:
    kind: str  # "param", "slash", "star", "vararg", "kwarg"
    name: str  # the parameter name, or "/" / "*"
    label: str  # how an instruction names it: "a", "/", "*", "*args", "**kw"
    start: int
    end: int


def signature(src: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, toks: list[Tok]):
    """``(open_paren_end, close_paren_start, segments)`` of ``fn``'s parameter list."""
    st = SourceText(src)
    def_at = st.offset(fn.lineno, fn.col_offset)
    i = next(k for k, t in enumerate(toks) if t.start >= def_at and t.string == "(")
    open_end, depth, seg, segments = toks[i].end, 0, [], []
    for t in toks[i + 1:]:
        if t.type in (tokenize.NL, tokenize.COMMENT, tokenize.NEWLINE):
            continue
        if depth == 0 and t.string in (",", ")"):
            if seg:
                segments.append(_segment(seg))
            seg = []
            if t.string == ")":
                return open_end, t.start, segments
            continue
        depth += t.string in ("(", "[", "{")
        depth -= t.string in (")", "]", "}")
        seg.append(t)
    raise ValueError("unbalanced signature")


def _segment(seg: list[Tok]) -> Segment:
    first, start, end = seg[0].string, seg[0].start, seg[-1].end
    if first == "/":
        return Segment("slash", "/", "/", start, end)
    if first == "*":
        if len(seg) == 1:
            return Segment("star", "*", "*", start, end)
        return Segment("vararg", seg[1].string, "*" + seg[1].string, start, end)
    if first == "**":
        return Segment("kwarg", seg[1].string, "**" + seg[1].string, start, end)
    return Segment("param", first, first, start, end)


def _positional_defaults(args: ast.arguments) -> list[bool]:
    n = len(args.posonlyargs) + len(args.args)
    return [False] * (n - len(args.defaults)) + [True] * len(args.defaults)


def _options(src, fn, toks, rng: random.Random) -> list[dict]:
    """Every valid placement as a params dict (without the name)."""
    open_end, close_start, segs = signature(src, fn, toks)
    has_default = _positional_defaults(fn.args)
    n_pos_segments = next((k for k, s in enumerate(segs) if s.kind not in ("param", "slash")), len(segs))
    out = []
    for j in range(n_pos_segments + 1):
        p = sum(s.kind == "param" for s in segs[:j])  # positional parameters before slot j
        if j == 0 and segs and segs[0].label in ("self", "cls"):
            continue  # never before self / cls
        before_default = any(has_default[:p])
        after_all_default = all(has_default[p:])
        if before_default:
            default = "required"
        else:
            default = "optional" if after_all_default else "none"
        if j > 0:
            anchor = ("after", segs[j - 1].label)
        elif segs:
            anchor = ("before", segs[0].label)
        else:
            anchor = ("only", None)
        if j > 0:
            insert = (segs[j - 1].end, ", {p}")
        else:
            insert = (segs[0].start, "{p}, ") if segs else (open_end, "{p}")
        out.append({"kind": "positional", "where": anchor[0], "anchor": anchor[1], "default": default,
                    "at": insert})
    star = [k for k, s in enumerate(segs) if s.kind in ("star", "vararg")]
    kwarg = [k for k, s in enumerate(segs) if s.kind == "kwarg"]
    if star:
        last = (kwarg[0] if kwarg else len(segs)) - 1
        out.append({"kind": "keyword_only", "where": "after", "anchor": segs[last].label,
                    "default": "optional", "at": (segs[last].end, ", {p}")})
    elif kwarg:
        out.append({"kind": "keyword_only", "where": "new_star", "anchor": None, "default": "optional",
                    "at": (segs[kwarg[0]].start, "*, {p}, ")})
    else:
        at = (segs[-1].end, ", *, {p}") if segs else (open_end, "*, {p}")
        out.append({"kind": "keyword_only", "where": "new_star", "anchor": None, "default": "optional",
                    "at": at})
    return out


def _instruction(kind: str, where: str, anchor: str | None, text: str) -> str:
    head = "add keyword-only parameter" if kind == "keyword_only" else "add parameter"
    if where == "only":
        return f"{head} `{text}` as the only parameter"
    if where == "new_star":
        return f"{head} `{text}`"
    return f"{head} `{text}` {where} `{anchor}`"


def _is_property(fn) -> bool:
    """Decorated ``@property`` / ``@functools.cached_property`` / ``@x.setter`` and the like."""
    for d in fn.decorator_list:
        name = d.attr if isinstance(d, ast.Attribute) else d.id if isinstance(d, ast.Name) else ""
        if name.endswith("property") or name in ("setter", "getter", "deleter"):
            return True
    return False


def _is_protocol_dunder(fn) -> bool:
    """``__lt__``, ``__len__``, ...: called by the interpreter with a fixed number of arguments,
    so a new *required* parameter breaks every use (``__init__`` / ``__new__`` are called with the
    caller's arguments, like any function)."""
    n = fn.name
    return n.startswith("__") and n.endswith("__") and n not in ("__init__", "__new__")


def generate(src: str, rng: random.Random, names: NamePool = TRAIN) -> Edit | None:
    parsed = parse_function(src)
    if parsed is None:
        return None
    tree, fn = parsed
    if _is_property(fn):
        return None  # a property is read as an attribute: no call could pass a new parameter
    toks = tokens(src)
    try:
        options = _options(src, fn, toks, rng)
    except (ValueError, StopIteration):
        return None
    dunder = _is_protocol_dunder(fn)
    if dunder:  # Python calls it with a fixed arity: only a parameter with a default will do
        options = [o for o in options if o["default"] != "none"]  # "none": no default possible there
        if not options:
            return None
    name = names.fresh(rng, identifiers(tree, toks))
    if name is None:
        return None
    opt = rng.choice(options)
    optional = opt["default"] == "optional" and (dunder or rng.random() < 0.5)
    want_default = opt["default"] == "required" or optional
    default = rng.choice(DEFAULTS) if want_default else None
    text = name if default is None else f"{name}={default}"
    offset, template = opt["at"]
    after = src[:offset] + template.format(p=text) + src[offset:]
    params = {"name": name, "default": default, "kind": opt["kind"], "where": opt["where"],
              "anchor": opt["anchor"]}
    return Edit(KIND, _instruction(opt["kind"], opt["where"], opt["anchor"], text), after, params)


def _expected_arguments(args: ast.arguments, p: dict) -> ast.arguments | None:
    """``args`` with the parameter of ``p`` added, or None if ``p`` does not fit ``args``."""
    args = copy.deepcopy(args)
    new = ast.arg(arg=p["name"])
    default = None if p["default"] is None else ast.parse(p["default"], mode="eval").body
    if p["kind"] == "keyword_only":
        if p["where"] == "new_star":
            if args.vararg is not None or args.kwonlyargs:
                return None
        else:
            labels = [a.arg for a in args.kwonlyargs] or (["*" + args.vararg.arg] if args.vararg else ["*"])
            if p["where"] != "after" or p["anchor"] != labels[-1]:
                return None
            if p["anchor"] == "*" and not args.kwonlyargs:
                return None  # a bare "*" needs keyword-only parameters after it
        args.kwonlyargs.append(new)
        args.kw_defaults.append(default)
        return args
    # positional: a list of (label, arg, default) with "/" as a marker
    n_po = len(args.posonlyargs)
    pos = list(args.posonlyargs) + list(args.args)
    defaults = [None] * (len(pos) - len(args.defaults)) + list(args.defaults)
    entries = [(a.arg, a, d) for a, d in zip(pos, defaults)]
    if n_po:
        entries.insert(n_po, ("/", None, None))
    labels = [e[0] for e in entries]
    if p["where"] == "after" and p["anchor"] in labels:
        k = labels.index(p["anchor"]) + 1
    elif p["where"] == "before" and entries and p["anchor"] == labels[0]:
        k = 0
    elif p["where"] == "before" and not entries:
        others = ([("*" + args.vararg.arg) if args.vararg else "*"] if (args.vararg or args.kwonlyargs)
                  else []) + (["**" + args.kwarg.arg] if args.kwarg else [])
        if not others or p["anchor"] != others[0]:
            return None
        k = 0
    elif p["where"] == "only" and not entries and not (args.vararg or args.kwonlyargs or args.kwarg):
        k = 0
    else:
        return None
    entries.insert(k, (p["name"], new, default))
    slash = labels.index("/") + (k <= labels.index("/")) if "/" in labels else None
    real = [e for e in entries if e[0] != "/"]
    ds = [e[2] for e in real]
    first = next((i for i, d in enumerate(ds) if d is not None), len(ds))
    if any(d is None for d in ds[first:]):
        return None  # a parameter without a default after one with a default
    n_new_po = slash if slash is not None else 0
    args.posonlyargs = [e[1] for e in real[:n_new_po]]
    args.args = [e[1] for e in real[n_new_po:]]
    args.defaults = ds[first:]
    return args


def verify(before: str, after: str, edit: Edit) -> bool:
    p = edit.params
    name, default = p.get("name"), p.get("default")
    if not isinstance(name, str) or not name.isidentifier() or is_reserved(name):
        return False
    if p.get("kind") not in ("positional", "keyword_only"):
        return False
    parsed, after_tree = parse_function(before), parse(after)
    if parsed is None or after_tree is None:
        return False
    tree, fn = parsed
    try:
        if name in identifiers(tree, tokens(before)):
            return False
        if default is not None and not isinstance(ast.parse(default, mode="eval").body, ast.Constant):
            return False
        expected = _expected_arguments(fn.args, p)
    except (SyntaxError, ValueError, TypeError, KeyError):
        return False
    if expected is None:
        return False
    fn.args = expected
    if ast.dump(tree) != ast.dump(after_tree):
        return False
    # the text: one contiguous insertion inside the signature's parentheses
    k = len(after) - len(before)
    if k <= 0:
        return False
    i = 0
    while i < len(before) and before[i] == after[i]:
        i += 1
    if after[i + k:] != before[i:]:
        return False
    open_end, close_start, _ = signature(before, parse_function(before)[1], tokens(before))
    return open_end <= i <= close_start
