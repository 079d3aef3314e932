"""Extract functions and methods from the running interpreter's standard library.

``extract_functions(root=None, modules=None)`` walks ``sysconfig.get_paths()["stdlib"]`` and
returns one :class:`Function` per ``def`` / ``async def`` that is module-level (also inside a
module-level ``if`` / ``try`` / ``with`` block) or a method of a class (at any class
nesting), whose source fits a size tier.

Design choices:

* **What is skipped.** Folders ``site-packages``, ``dist-packages``, ``test``, ``tests``,
  ``idle_test``, ``idlelib``, ``__pycache__`` and hidden ones; files ``test_*.py``; files that
  cannot be read, are not UTF-8 or do not parse (counted in :class:`ExtractStats`, never
  fatal). Functions nested in functions are not units of their own: they are part of the
  function that contains them.
* **Standalone source.** A unit's text runs from its first decorator line to its last line,
  with the ``def``'s indentation removed from every line that starts with it (whitespace-only
  lines become empty), and ends with ``"\\n"``. It is kept only if it contains no tab, CR,
  form feed or vertical tab, is exactly one function definition when parsed alone, and
  compiles (``compile`` also checks ``nonlocal`` / ``return`` placement). Like
  ``textwrap.dedent``, removing the indentation also touches the continuation lines of a
  multi-line string (docstrings), which is accepted.
* **Tiers** are by UTF-8 size of that text: ``micro`` <= 256 bytes, ``small`` <= 512 bytes;
  larger functions are dropped.
* **Provenance.** :func:`stdlib_hash` hashes the (path, bytes) pairs of every readable file
  the walk visits; together with :data:`EXTRACT_VERSION` it keys the cached function list.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from sandbox.core.errors import UserError
from sandbox.tasks.edits.source import compiles, parse, parse_function

#: bump when the set of extracted functions or their text changes
EXTRACT_VERSION = 1

#: tier name -> maximum UTF-8 size in bytes (inclusive), smallest first
TIERS = {"micro": 256, "small": 512}

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib",
                       "__pycache__"})
_BAD_CHARS = ("\t", "\r", "\x0c", "\x0b")


@dataclass(frozen=True)
class Function:
    """One function or method of the stdlib, as a standalone source text."""

    module: str  # dotted module name: "email.mime.text", "json" (package __init__)
    qualname: str  # "dumps", "JSONEncoder.default", "A.B.method"
    top: str  # top-level module ("email"): the split key
    source: str  # standalone, dedented source ending with "\n"
    tier: str  # "micro" or "small"
    path: str = ""  # path relative to the stdlib root
    lineno: int = 0  # first line (decorator or def) in that file

    @property
    def id(self) -> str:
        return f"{self.module}:{self.qualname}:{self.lineno}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Function:
        return cls(**d)


@dataclass
class ExtractStats:
    files: int = 0
    unreadable: list[str] = field(default_factory=list)  # OSError or not UTF-8
    unparsable: list[str] = field(default_factory=list)
    functions_seen: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def tier_of(source: str) -> str | None:
    """The smallest tier ``source`` fits in, or None when it is too large."""
    size = len(source.encode("utf-8"))
    for name, limit in TIERS.items():
        if size <= limit:
            return name
    return None


def check_tiers(tiers: Iterable[str] | None) -> tuple[str, ...]:
    """Validate tier names (None: all) and return them in :data:`TIERS` order."""
    if tiers is None:
        return tuple(TIERS)
    if isinstance(tiers, str):
        tiers = [tiers]
    tiers = list(tiers)
    for t in tiers:
        if t not in TIERS:
            raise UserError(f"tier {t!r}: unknown; choose from {', '.join(TIERS)}")
    if not tiers:
        raise UserError(f"tiers: empty; choose from {', '.join(TIERS)}")
    return tuple(t for t in TIERS if t in tiers)


def stdlib_root(root: str | os.PathLike | None = None) -> Path:
    path = Path(root if root is not None else sysconfig.get_paths()["stdlib"]).expanduser()
    if not path.is_dir():
        raise UserError(f"stdlib root '{path}': no such folder (point it at a Python stdlib)")
    return path


def module_name(rel: str) -> tuple[str, str]:
    """``(dotted module, top-level module)`` of a relative ``.py`` path."""
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts), parts[0]


def stdlib_files(root: str | os.PathLike | None = None,
                 modules: Sequence[str] | None = None) -> list[str]:
    """Relative posix paths of the stdlib ``.py`` files considered, sorted.

    ``modules`` restricts the walk to those top-level modules (tests use a few).
    """
    base = stdlib_root(root)
    wanted = None if modules is None else set(modules)
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for f in filenames:
            if not f.endswith(".py") or f.startswith("test_"):
                continue
            rel = Path(dirpath, f).relative_to(base).as_posix()
            if wanted is None or module_name(rel)[1] in wanted:
                out.append(rel)
    out.sort()
    if wanted is not None and not out:
        raise UserError(f"modules={sorted(wanted)}: none of them is in the stdlib at '{base}'")
    return out


def _read(base: Path, rel: str) -> bytes | None:
    try:
        return (base / rel).read_bytes()
    except OSError:
        return None


def stdlib_hash(root: str | os.PathLike | None = None,
                modules: Sequence[str] | None = None) -> str:
    """sha256 over the (path, bytes) pairs of the readable files :func:`stdlib_files` lists."""
    base = stdlib_root(root)
    h = hashlib.sha256()
    for rel in stdlib_files(base, modules):
        data = _read(base, rel)
        if data is None:
            continue
        for part in (rel.encode("utf-8"), data):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def standalone_source(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The dedented text of ``node`` given its file's lines (no line ends), or None."""
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    first = lines[start - 1]
    indent = first[: len(first) - len(first.lstrip(" "))]
    if len(indent) != node.col_offset:
        return None  # something else precedes the def (or decorator) on its line
    out = []
    for line in lines[start - 1: node.end_lineno]:
        if not line.strip():
            out.append("")
        elif line.startswith(indent):
            out.append(line[len(indent):])
        else:
            out.append(line)  # continuation of a multi-line string
    return "\n".join(out) + "\n"


def functions_from_source(text: str, module: str, top: str, path: str = "",
                          stats: ExtractStats | None = None) -> list[Function]:
    """Every unit (see the module docstring) of one file's source text, in source order."""
    stats = stats if stats is not None else ExtractStats()
    tree = parse(text)
    if tree is None:
        stats.unparsable.append(path or module)
        return []
    lines = text.split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    out: list[Function] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stats.functions_seen += 1
                f = _unit(lines, node, module, top, path, prefix + node.name, stats)
                if f is not None:
                    out.append(f)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")
            else:
                for name in ("body", "orelse", "finalbody"):
                    visit(getattr(node, name, None) or [], prefix)
                for handler in getattr(node, "handlers", None) or []:
                    visit(handler.body, prefix)

    visit(tree.body, "")
    return out


def _unit(lines, node, module, top, path, qualname, stats: ExtractStats) -> Function | None:
    src = standalone_source(lines, node)
    if src is None:
        stats.drop("shares its line")
        return None
    tier = tier_of(src)
    if tier is None:
        stats.drop("too large")
        return None
    if any(c in src for c in _BAD_CHARS):
        stats.drop("tab or other control character")
        return None
    if parse_function(src) is None or not compiles(src):
        stats.drop("not standalone")
        return None
    lineno = min([d.lineno for d in node.decorator_list] + [node.lineno])
    return Function(module, qualname, top, src, tier, path, lineno)


def extract_functions(root: str | os.PathLike | None = None, modules: Sequence[str] | None = None,
                      progress: bool = True,
                      stats: ExtractStats | None = None) -> list[Function]:
    """All units of the stdlib at ``root`` (default: this interpreter's), in path order."""
    base = stdlib_root(root)
    stats = stats if stats is not None else ExtractStats()
    files = stdlib_files(base, modules)
    out: list[Function] = []
    for rel in tqdm(files, disable=not progress, unit="file", desc="extract stdlib functions"):
        stats.files += 1
        data = _read(base, rel)
        try:
            text = data.decode("utf-8") if data is not None else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            stats.unreadable.append(rel)
            continue
        module, top = module_name(rel)
        out += functions_from_source(text, module, top, rel, stats)
    return out
