"""Edit kind ``literal``: change one number, string or boolean constant.

Instruction: ``change `0` to `1``` when the literal's text occurs once in the function, else
``in `if n < 0:`, change `0` to `1``` with the line as the anchor.

Design choices:

* Candidates are ``ast.Constant`` nodes whose source is a single token: ``int`` (decimal,
  hex, octal or binary, no ``_``), ``float`` (finite), ``True`` / ``False``, and one-line
  ``str`` / ``bytes`` literals without escapes, backticks or f-prefix. Docstrings, implicitly
  concatenated strings and anything inside an f-string are skipped.
* New values: ints move by small steps (``n+1``, ``n-1``, ``2n``, 0 / 1) in the same base;
  floats double, halve or add one (written by ``repr``); booleans flip; strings get a word of
  the name pool (replace, append, or change case) with the same prefix and quotes.
* Uniqueness: without an anchor, the literal's text must occur once in the whole function
  text, comments and other strings included (numbers and booleans as whole words, strings as
  substrings); otherwise its line is the anchor, which must be unique in the function and hold
  the literal's text once.
* The verifier finds the single token spelled ``old`` (on the anchor line, if any), requires
  ``after`` to be ``before`` with exactly that token replaced by ``new``, and compares the ASTs
  with that constant's value set to ``literal_eval(new)``.
"""

from __future__ import annotations

import ast
import math
import random
import tokenize

from sandbox.tasks.edits.edit import Edit, one_token_replaced
from sandbox.tasks.edits.names import TRAIN, NamePool
from sandbox.tasks.edits.source import (
    SourceText,
    count_word,
    lines_matching,
    parse,
    parse_function,
    tokens,
    unique_line,
)

KIND = "literal"
_STR_PREFIXES = {"", "r", "b", "u", "R", "B", "U"}


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant):
                out.add(id(n.body[0].value))
    return out


def _in_fstrings(tree: ast.AST) -> set[int]:
    return {id(c) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for c in ast.walk(n)}


def _split_string(text: str) -> tuple[str, str, str] | None:
    """``(prefix, quote, body)`` of a simple one-line string token, or None."""
    i = 0
    while i < len(text) and text[i].isalpha():
        i += 1
    prefix, rest = text[:i], text[i:]
    if prefix not in _STR_PREFIXES or len(rest) < 2 or rest[0] not in "'\"" or rest[-1] != rest[0]:
        return None
    if rest.startswith(rest[0] * 3) or "\\" in rest or "\n" in rest or "`" in rest:
        return None
    return prefix, rest[0], rest[1:-1]


def _new_int(text: str, value: int, rng: random.Random) -> str | None:
    if "_" in text:
        return None
    low = text.lower()
    if low.startswith(("0x", "0o", "0b")):
        base = {"x": 16, "o": 8, "b": 2}[low[1]]
        options = [value + 1, value * 2] + ([value - 1] if value > 0 else [])
        new = rng.choice(options)
        digits = {16: format(new, "x"), 8: format(new, "o"), 2: format(new, "b")}[base]
        if text[2:].isupper():
            digits = digits.upper()
        return text[:2] + digits
    if len(text) > 1 and text.startswith("0"):
        return None
    options = [value + 1] + ([value - 1] if value > 0 else []) + ([value * 2] if value > 1 else [])
    options += [v for v in (0, 1) if v != value]
    return str(rng.choice(options))


def _new_float(value: float, rng: random.Random) -> str | None:
    new = rng.choice([value * 2, value / 2, value + 1]) if value else rng.choice([1.0, 0.5])
    if not math.isfinite(new) or new == value:
        return None
    text = repr(new)
    return text if text[0].isdigit() else None


def _new_string(text: str, rng: random.Random, names: NamePool) -> str | None:
    parts = _split_string(text)
    if parts is None:
        return None
    prefix, quote, body = parts
    if len(body) > 40:
        return None
    word = names.word(rng)
    options = [word] if len(body) <= 16 else []
    if body:
        options.append(body + (" " if " " in body else "_") + word)
        if body.upper() != body:
            options.append(body.upper())
        elif body.lower() != body:
            options.append(body.lower())
    options = [o for o in options if o != body and quote not in o]
    if not options:
        return None
    return prefix + quote + rng.choice(options) + quote


def _new_text(node: ast.Constant, text: str, rng: random.Random, names: NamePool) -> str | None:
    v = node.value
    if isinstance(v, bool):
        return "False" if v else "True"
    if isinstance(v, int):
        return _new_int(text, v, rng)
    if isinstance(v, float):
        return _new_float(v, rng)
    if isinstance(v, (str, bytes)):
        new = _new_string(text, rng, names)
        if new is not None and isinstance(v, bytes) and not new.isascii():
            return None
        return new
    return None


def _count(haystack: str, text: str) -> int:
    """Occurrences of a literal's text: plain substrings for strings, words for the rest."""
    return haystack.count(text) if text[-1] in "'\"" else count_word(haystack, text)


def _anchor(src: str, node: ast.Constant, text: str) -> tuple[bool, str | None]:
    """``(ok, anchor)``: no anchor when ``text`` occurs once in the function."""
    if _count(src, text) == 1:
        return True, None
    if node.lineno != node.end_lineno:
        return False, None
    anchor = unique_line(src, node.lineno)
    if anchor is None or _count(anchor, text) != 1:
        return False, None
    return True, anchor


def generate(src: str, rng: random.Random, names: NamePool = TRAIN) -> Edit | None:
    parsed = parse_function(src)
    if parsed is None:
        return None
    tree, _ = parsed
    st = SourceText(src)
    skip = _docstring_ids(tree) | _in_fstrings(tree)
    cands = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in skip
             and n.value is not None and n.value is not Ellipsis and not isinstance(n.value, complex)]
    rng.shuffle(cands)
    for node in cands:
        start, end = st.span(node)
        text = src[start:end]
        try:
            toks = [t for t in tokens(text) if t.type not in (tokenize.NEWLINE, tokenize.ENDMARKER)]
        except SyntaxError:
            continue
        if len(toks) != 1 or toks[0].string != text:
            continue
        ok, anchor = _anchor(src, node, text)
        if not ok:
            continue
        new = _new_text(node, text, rng, names)
        if new is None or new == text or "`" in new:
            continue
        try:
            if ast.literal_eval(new) == node.value and type(ast.literal_eval(new)) is type(node.value):
                continue
        except (ValueError, SyntaxError):
            continue
        after = src[:start] + new + src[end:]
        where = f"in `{anchor}`, " if anchor else ""
        return Edit(KIND, f"{where}change `{text}` to `{new}`", after,
                    {"old": text, "new": new, "anchor": anchor})
    return None


def locate(before: str, old: str, anchor: str | None):
    """The single token of ``before`` spelled ``old`` (on the ``anchor`` line), or None."""
    try:
        toks = tokens(before)
    except SyntaxError:
        return None
    lines = None
    if anchor is not None:
        lines = set(lines_matching(before, anchor))
        if len(lines) != 1:
            return None
    hits = [t for t in toks if t.string == old and (lines is None or t.line in lines)]
    return hits[0] if len(hits) == 1 else None


def verify(before: str, after: str, edit: Edit) -> bool:
    old, new, anchor = (edit.params.get(k) for k in ("old", "new", "anchor"))
    if not (isinstance(old, str) and isinstance(new, str)):
        return False
    tok = locate(before, old, anchor)
    if tok is None or tok.type not in (tokenize.NUMBER, tokenize.STRING, tokenize.NAME):
        return False
    if not one_token_replaced(before, after, tok.start, tok.end, new):
        return False
    tree, after_tree = parse(before), parse(after)
    if tree is None or after_tree is None:
        return False
    try:
        value = ast.literal_eval(new)
    except (ValueError, SyntaxError):
        return False
    st = SourceText(before)
    hits = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and st.span(n) == (tok.start, tok.end)]
    if len(hits) != 1:
        return False
    if hits[0].value == value and type(hits[0].value) is type(value):
        return False  # not a change
    hits[0].value = value
    hits[0].kind = "u" if new.startswith(("u", "U")) else None
    return ast.dump(tree) == ast.dump(after_tree)
