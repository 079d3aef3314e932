"""Unified-diff hunks relative to a function, and a strict patch applier.

``udiff(before, after)`` is the ``udiff`` target format: the hunks of a unified diff of the
function's lines, *without* the ``---`` / ``+++`` file header, line numbers counted from the
function's first line. ``apply_udiff(before, patch)`` applies such a patch and returns the
new text, or None when it does not apply.

Design choices:

* **Standard format, written here.** Hunks are ``@@ -a,b +c,d @@`` followed by lines starting
  with ``' '``, ``'-'`` or ``'+'``; a count of 1 is omitted and an empty range is written with
  the line *before* it, as GNU diff does. :data:`CONTEXT` lines of context (3, like ``git
  diff``); changes closer than twice that share a hunk. A text without a final newline gets
  the ``\\ No newline at end of file`` marker.
* **Strict application.** Every hunk header must parse, the hunk body must hold exactly the
  counted lines, hunks must be in order and not overlap, each old start must be where the
  context and removed lines actually are (no fuzz, no offset search), and every new start
  must agree with the line shift of the hunks before it. Anything else (a malformed model
  prediction, a wrong header) returns None: a failed apply, never an exception.
* An empty patch means "no change": ``apply_udiff(before, "") == before``.
"""

from __future__ import annotations

import difflib
import re

CONTEXT = 3
NO_NEWLINE = "\\ No newline at end of file"
_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(?: .*)?$")


def _split(text: str) -> list[str]:
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
        return [line + "\n" for line in out]
    return [line + "\n" for line in out[:-1]] + [out[-1]]


def _range(start: int, count: int) -> str:
    if count == 1:
        return f"{start + 1}"
    if count == 0:
        return f"{start},0"
    return f"{start + 1},{count}"


def _emit(prefix: str, line: str, out: list[str]) -> None:
    if line.endswith("\n"):
        out.append(prefix + line[:-1])
    else:
        out += [prefix + line, NO_NEWLINE]


def udiff(before: str, after: str, context: int = CONTEXT) -> str:
    """Unified-diff hunks turning ``before`` into ``after`` ("" when they are equal)."""
    a, b = _split(before), _split(after)
    out: list[str] = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for group in sm.get_grouped_opcodes(context):
        i1, j1 = group[0][1], group[0][3]
        i2, j2 = group[-1][2], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@")
        for op, x1, x2, y1, y2 in group:
            if op == "equal":
                for line in a[x1:x2]:
                    _emit(" ", line, out)
                continue
            for line in a[x1:x2]:
                _emit("-", line, out)
            for line in b[y1:y2]:
                _emit("+", line, out)
    return "\n".join(out) + "\n" if out else ""


def _parse_hunks(patch: str):
    """``[(old_start, old_count, new_start, new_count, body_lines)]`` or None if malformed."""
    lines = patch.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    hunks, i = [], 0
    while i < len(lines):
        m = _HEADER.match(lines[i])
        if not m:
            return None
        os_, oc = int(m.group(1)), int(m.group(2)) if m.group(2) is not None else 1
        ns, nc = int(m.group(3)), int(m.group(4)) if m.group(4) is not None else 1
        i += 1
        body: list[tuple[str, str]] = []  # (tag, line with its newline)
        need_old, need_new = oc, nc
        while need_old or need_new:
            if i >= len(lines) or not lines[i] or lines[i][0] not in " -+":
                return None
            tag, text = lines[i][0], lines[i][1:] + "\n"
            if tag in " -":
                need_old -= 1
            if tag in " +":
                need_new -= 1
            if need_old < 0 or need_new < 0:
                return None
            i += 1
            if i < len(lines) and lines[i] == NO_NEWLINE:
                text = text[:-1]
                i += 1
            body.append((tag, text))
        hunks.append((os_, oc, ns, nc, body))
    return hunks


def apply_udiff(before: str, patch: str) -> str | None:
    """Apply ``patch`` (hunks as :func:`udiff` writes them) to ``before`` strictly, or None."""
    if not isinstance(patch, str):
        return None
    if patch.strip() == "":
        return before
    hunks = _parse_hunks(patch)
    if not hunks:
        return None
    a = _split(before)
    out: list[str] = []
    pos = 0  # next line of ``a`` not yet copied
    shift = 0  # new line numbers minus old line numbers so far
    for os_, oc, ns, nc, body in hunks:
        start = os_ - 1 if oc else os_  # 0-based index of the first old line of the hunk
        if start < pos or start + oc > len(a):
            return None
        if (ns - 1 if nc else ns) != start + shift:
            return None
        old = [t for tag, t in body if tag in " -"]
        if a[start:start + oc] != old:
            return None
        out += a[pos:start]
        out += [t for tag, t in body if tag in " +"]
        pos = start + oc
        shift += nc - oc
    out += a[pos:]
    return "".join(out)
