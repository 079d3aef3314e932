"""Text-level helpers shared by the edit kinds: positions, spans, tokens, anchors, diff size.

Design choices:

* **Edits are span substitutions on the source text.** ``ast`` positions are
  ``(lineno, col_offset)`` with the column in UTF-8 *bytes*; :class:`SourceText` maps them to
  string offsets so that :func:`replace_spans` can rewrite exactly the characters of a node and
  leave every other character (spacing, comments, quotes) as it was. ``ast.unparse`` is never
  used: it would reformat the whole function.
* **Sources use ``\\n`` only.** The extractor drops functions containing ``\\r``, tabs, form
  feeds or vertical tabs, so "line" means the same thing to ``ast``, ``tokenize`` and
  ``str.split("\\n")``.
* **Changed tokens** (:func:`n_changed_tokens`) are counted on ``tokenize`` tokens without the
  layout tokens (NEWLINE, NL, INDENT, DEDENT, ENDMARKER): ``difflib`` aligns the two token
  sequences and every non-equal block counts ``max(len(old), len(new))``. On Python < 3.12 an
  f-string is a single STRING token, so renaming a name inside one changes one token.
* **Content-addressed anchors.** Instructions point at code by its text, never by line number;
  :func:`unique_line` accepts a line as an anchor only if its stripped text occurs once in
  the function.
"""

from __future__ import annotations

import ast
import difflib
import io
import re
import tokenize
import warnings
from dataclasses import dataclass

#: diff-size bins over the number of changed tokens (see :func:`diff_size_bin`)
DIFF_BINS = ("1", "2-4", "5-16", "17+")

_LAYOUT = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
           tokenize.ENCODING}


class SourceText:
    """A source string with ``ast``-position to string-offset mapping."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")  # the last element is "" when text ends with "\n"
        self.starts = []
        pos = 0
        for line in self.lines:
            self.starts.append(pos)
            pos += len(line) + 1

    def offset(self, lineno: int, col_byte: int) -> int:
        """String offset of ``(lineno, col_offset)`` as ``ast`` reports them (UTF-8 columns)."""
        line = self.lines[lineno - 1]
        if line.isascii():
            return self.starts[lineno - 1] + col_byte
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col_byte].decode("utf-8"))

    def token_offset(self, pos: tuple[int, int]) -> int:
        """String offset of a ``tokenize`` position (``tokenize`` columns are characters)."""
        if pos[0] > len(self.starts):  # ENDMARKER after a text without a final newline
            return len(self.text)
        return self.starts[pos[0] - 1] + pos[1]

    def span(self, node: ast.AST) -> tuple[int, int]:
        """``(start, end)`` string offsets of an ``ast`` node with end positions."""
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def line(self, lineno: int) -> str:
        return self.lines[lineno - 1]

    def indent_of(self, lineno: int) -> str:
        line = self.line(lineno)
        return line[: len(line) - len(line.lstrip(" "))]


def replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace non-overlapping ``(start, end, new)`` string spans of ``text``."""
    out, pos = [], 0
    for start, end, new in sorted(spans):
        if start < pos:
            raise ValueError("overlapping spans")
        out += [text[pos:start], new]
        pos = end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Tok:
    type: int
    string: str
    start: int  # string offsets
    end: int
    line: int  # 1-based line of the token start


def tokens(text: str) -> list[Tok]:
    """``tokenize`` tokens of ``text`` with string offsets. Raises ``SyntaxError`` on failure."""
    st = SourceText(text)
    try:
        raw = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError) as e:
        raise SyntaxError(str(e)) from None
    return [Tok(t.type, t.string, st.token_offset(t.start), st.token_offset(t.end), t.start[0])
            for t in raw]


def significant(toks: list[Tok]) -> list[Tok]:
    return [t for t in toks if t.type not in _LAYOUT]


def parse(text: str) -> ast.Module | None:
    """``ast.parse`` or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def compiles(text: str) -> bool:
    """True when ``text`` compiles (parse plus symbol-table checks such as ``nonlocal``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(text, "<edit>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def parse_function(text: str) -> tuple[ast.Module, ast.FunctionDef | ast.AsyncFunctionDef] | None:
    """``(module, function)`` when ``text`` is exactly one (async) function definition."""
    tree = parse(text)
    if tree is None or len(tree.body) != 1:
        return None
    fn = tree.body[0]
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    return tree, fn


def stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n")]


def unique_line(text: str, lineno: int) -> str | None:
    """The stripped text of line ``lineno`` if it is non-empty and occurs once in ``text``."""
    lines = stripped_lines(text)
    anchor = lines[lineno - 1]
    if not anchor or "`" in anchor or lines.count(anchor) != 1:
        return None
    return anchor


def lines_matching(text: str, anchor: str) -> list[int]:
    """1-based numbers of the lines of ``text`` whose stripped text equals ``anchor``."""
    return [i + 1 for i, line in enumerate(stripped_lines(text)) if line == anchor]


def count_word(text: str, word: str) -> int:
    """Occurrences of ``word`` in ``text`` not glued to identifier characters, digits or dots."""
    return len(re.findall(r"(?<![\w.])" + re.escape(word) + r"(?![\w.])", text))


def n_changed_tokens(before: str, after: str) -> int:
    """Number of changed tokens between two sources (see the module docstring)."""
    a, b = _token_strings(before), _token_strings(after)
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal")


def _token_strings(text: str) -> list[str]:
    try:
        return [t.string for t in significant(tokens(text))]
    except SyntaxError:
        return text.split()  # not Python (a malformed prediction): whitespace words


def diff_size_bin(n_tokens: int) -> str:
    """``'1'``, ``'2-4'``, ``'5-16'`` or ``'17+'`` (``'0'`` for no change)."""
    if n_tokens <= 0:
        return "0"
    if n_tokens == 1:
        return "1"
    if n_tokens <= 4:
        return "2-4"
    if n_tokens <= 16:
        return "5-16"
    return "17+"
