"""Edits from a user's JSONL file, scored by ``eval=edits test_file=PATH`` like the frozen test set.

``read_edit_file(path)`` reads one JSON object per line::

    {"instruction": "Rename x to y.", "before": "def f(x):\\n    return x\\n",
     "after": "def f(y):\\n    return y\\n", "kind": "rename"}

and returns an :class:`EditFile`: its :class:`~sandbox.tasks.edits.dataset.EditItem` s (file
order), the resolved path, the sha256 of its bytes and the line of every item. Everything
after that (prompts, decoding, metrics, diff-size bins, latency) is the frozen set's pipeline.

Design choices:

* **Items are built by the generators' own constructor.** Each line becomes a
  :class:`~sandbox.tasks.edits.extract.Function` and an :class:`~sandbox.tasks.edits.edit.Edit`
  passed to :func:`~sandbox.tasks.edits.dataset.make_item`, so the id (sha256 of before and
  instruction), the ``udiff`` target, the changed-token count and its bin are computed by the
  very functions that compute them for the frozen sets. ``kind`` is only a label (default
  ``external``; any non-empty string, also one no generator knows); ``tier`` is the size tier
  of ``before`` (:func:`~sandbox.tasks.edits.extract.tier_of`, ``large`` above the largest), a
  label too: the file is not filtered by tier. ``module`` is the file's name and ``qualname``
  the function's name when ``before`` is one function definition.
* **The whole file or nothing.** Every problem is a :class:`~sandbox.core.errors.UserError`
  naming the file, the 1-based line and what to fix, raised before anything is decoded or
  written: a missing or empty file, text that is not UTF-8, a line that is not JSON or not an
  object, a missing, non-string or empty ``instruction`` / ``before`` / ``after``, a ``kind``
  that is not a non-empty string. Blank lines are skipped; other keys are ignored.
* **What the metrics need, checked.** ``before`` and ``after`` must parse (``ast.parse``):
  AST match and parse rate compare a prediction with the parsed gold edit, so an unparsable
  ``after`` would score an exact prediction as an AST miss. One function definition is *not*
  required: the prompt, the metrics and the diff are text-level and work on any module. An
  edit that changes no token (``before == after``, or whitespace only) is refused: the report
  bins edits by changed tokens (1, 2-4, 5-16, 17+) and such an edit would fall in no bin.
  The same (instruction, before) twice is refused too: the item id is the sha256 of those two
  (as for the frozen sets), so predictions would not say which line they answer.
* **Provenance travels with the results.** :meth:`EditFile.describe` (path and short sha256)
  goes into every summary and latency line, :meth:`EditFile.label` adds it and the line
  number to each prediction; ``split`` is ``test_file``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from sandbox.core.errors import UserError
from sandbox.tasks.edits.dataset import EditItem, make_item
from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.extract import Function, tier_of
from sandbox.tasks.edits.source import DIFF_BINS

DEFAULT_KIND = "external"
SPLIT = "test_file"  # the ``split`` of the items and of the result lines
REQUIRED = ("instruction", "before", "after")
_SHAPE = ('one JSON object per line: {"instruction": ..., "before": ..., "after": ...} '
          '(strings; "kind" optional)')


@dataclass(frozen=True)
class EditFile:
    """The edits of one file (module doc): ``items`` in file order, ``lines[item.id]`` its line."""

    path: Path
    sha256: str
    items: list[EditItem]
    lines: dict[str, int]

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def describe(self) -> dict:
        """The fields that say which file was scored (summary and latency lines)."""
        return {"test_file": str(self.path), "test_file_sha256": self.short_hash}

    def label(self, preds: list[dict]) -> list[dict]:
        """Prediction rows (``{"id": ..., ...}``) with the file and the line they answer."""
        return [{**p, **self.describe(), "line": self.lines[p["id"]]} for p in preds]

    def kinds(self) -> list[str]:
        return sorted({it.kind for it in self.items})

    def select(self, kinds=None) -> list[EditItem]:
        """The items of ``kinds`` (a name, a list, or None: all); every name must occur in the file."""
        if kinds is None:
            return list(self.items)
        wanted = [kinds] if isinstance(kinds, str) else [str(k) for k in kinds]
        have = self.kinds()
        missing = [k for k in wanted if k not in have]
        if not wanted or missing:
            what = f"{', '.join(missing)} not in" if wanted else "empty; choose among the kinds of"
            raise UserError(f"kinds: {what} test_file={self.path} (its kinds: {', '.join(have)}); "
                            "pick from those or drop kinds")
        return [it for it in self.items if it.kind in wanted]


def _json_type(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(v), type(v).__name__)


def _where(path, n: int) -> str:
    return f"test_file={path} line {n}"


def _parse_error(text: str) -> str | None:
    """None when ``text`` parses, else the parser's message with its line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(text)
        return None
    except SyntaxError as e:
        return f"{e.msg}, its line {e.lineno}"
    except (ValueError, RecursionError, MemoryError) as e:
        return str(e).split("\n")[0] or type(e).__name__


def _function_name(before: str) -> str:
    body = ast.parse(before).body
    if len(body) == 1 and isinstance(body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return body[0].name
    return ""


def _fields(obj, where: str) -> tuple[str, str, str, str]:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: {_json_type(obj)}, not an object; write {_SHAPE}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise UserError(f"{where}: missing field {', '.join(repr(k) for k in missing)}; write {_SHAPE}")
    for k in REQUIRED:
        if not isinstance(obj[k], str):
            raise UserError(f"{where}: field '{k}' is {_json_type(obj[k])}, not a string; write {_SHAPE}")
    if not obj["instruction"].strip():
        raise UserError(f"{where}: field 'instruction' is empty; say what the edit does")
    if not obj["before"].strip() or not obj["after"].strip():
        raise UserError(f"{where}: field '{'before' if not obj['before'].strip() else 'after'}' is empty; "
                        "give the whole function before and after the edit")
    kind = obj.get("kind")
    if kind is None:
        kind = DEFAULT_KIND
    elif not isinstance(kind, str) or not kind.strip():
        raise UserError(f"{where}: field 'kind' must be a non-empty string (a label, e.g. \"rename\"), "
                        f"got {json.dumps(kind)}; or leave it out ({DEFAULT_KIND})")
    return obj["instruction"], obj["before"], obj["after"], kind


def read_edit_file(path) -> EditFile:
    """The edits of a JSONL file (module doc); UserError naming the line on any bad input."""
    given = Path(str(path)).expanduser()
    try:
        data = given.read_bytes()
    except FileNotFoundError:
        raise UserError(f"test_file={path}: no such file; pass a JSONL file of edits ({_SHAPE})") from None
    except IsADirectoryError:
        raise UserError(f"test_file={path}: a directory; pass a JSONL file of edits") from None
    except OSError as e:
        raise UserError(f"test_file={path}: cannot read it ({e.strerror})") from None
    p = given.resolve()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        n = data[:e.start].count(b"\n") + 1
        raise UserError(f"{_where(path, n)}: not UTF-8 text (byte {data[e.start]:#04x}); save the file "
                        "as UTF-8") from None
    items, lines = [], {}
    for n, raw in enumerate(text.split("\n"), start=1):  # JSON strings hold no raw newline
        if not raw.strip():
            continue
        where = _where(path, n)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); write {_SHAPE}") from None
        instruction, before, after, kind = _fields(obj, where)
        for name, src in (("before", before), ("after", after)):
            err = _parse_error(src)
            if err is not None:
                raise UserError(f"{where}: '{name}' is not valid Python ({err}); the metrics parse the "
                                "function, so give complete source with newlines as \\n")
        fn = Function(module=p.name, qualname=_function_name(before), top="", source=before,
                      tier=tier_of(before) or "large", path=str(p), lineno=n)
        item = make_item(fn, Edit(kind, instruction, after), SPLIT)
        if item.n_changed_tokens < 1:
            raise UserError(f"{where}: 'after' changes no token of 'before' (no-op or whitespace-only edit); "
                            f"the metrics bin edits by changed tokens ({', '.join(DIFF_BINS)}), none fits: "
                            "remove the line")
        if item.id in lines:
            raise UserError(f"{where}: same instruction and 'before' as line {lines[item.id]}; "
                            "remove one (an edit is identified by those two)")
        items.append(item)
        lines[item.id] = n
    if not items:
        raise UserError(f"test_file={path}: empty (no edit in it); write {_SHAPE}")
    return EditFile(p, hashlib.sha256(data).hexdigest(), items, lines)

