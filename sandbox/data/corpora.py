"""Corpora: where the text comes from, and how it is split into train / val / test.

A corpus is a small Hydra-instantiable class (``conf/data/<name>.yaml``) with a ``name``,
``val_fraction`` / ``test_fraction``, ``documents()`` (an iterator of :class:`Document`
in a deterministic order) and ``describe()`` (JSON-able provenance: source, version and
a sha256 of the content, which keys the prepared-data cache).

Design choices:

* **Split by group, with a stable hash.** Every document carries a ``group`` (the
  top-level module for the stdlib, a chunk id for the synthetic corpus, the file path
  for text files). :func:`split_of` maps a group to a split from ``sha256(salt +
  group)``, so the assignment is the same on every machine and run, does not depend on
  the other groups, and a group never straddles splits.
* **Tiny corpora still work.** :func:`split_documents` applies the split and then
  repairs degenerate outcomes deterministically: with at least 3 groups, groups are
  moved (in hash order) until each split has one; with 1 or 2 groups, every document
  is cut by position instead: its first characters go to train, the next
  ``val_fraction`` to val and the last ``test_fraction`` to test (so in that case a
  group does straddle splits). A split still empty after that is a :class:`UserError`.
* **Constructors never raise.** ``hydra.utils.instantiate`` would wrap a
  :class:`UserError` raised in ``__init__`` into an ``InstantiationException``, so
  parameters are checked when the corpus is first used (``documents`` / ``describe``).
* **Cheap provenance.** ``describe()`` reads and hashes the stdlib sources (~12 MB, well
  under a second) rather than their derived text; ``StdlibProse`` therefore hashes its
  source files plus the version of its extractor, which determines its text exactly.
"""

from __future__ import annotations

import ast
import codecs
import glob
import hashlib
import inspect
import io
import os
import sys
import sysconfig
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sandbox.core.errors import UserError
from sandbox.data import pcfg

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Document:
    group: str  # split key: top-level module / document id; a group never straddles splits
    text: str


def _unit(group: str, salt: str) -> float:
    """A stable uniform number in [0, 1) for ``group``."""
    digest = hashlib.sha256((salt + group).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(group: str, val_fraction: float, test_fraction: float, salt: str = "") -> str:
    """``'train'``, ``'val'`` or ``'test'`` for ``group``, from ``sha256(salt + group)``."""
    u = _unit(group, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for field, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, (int, float)) or not 0 < v < 1:
            raise UserError(f"data.{field}: must be a number in (0, 1), got {v!r} (e.g. 0.05)")
    if val_fraction + test_fraction >= 1:
        raise UserError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} leaves "
            "nothing for training (keep their sum below 1, e.g. 0.05 each)"
        )


def _empty_split_error(split: str) -> UserError:
    return UserError(
        f"data: the {split} split is empty (add more data, or change data.val_fraction / "
        "data.test_fraction)"
    )


def split_documents(
    documents: Iterable[Document], val_fraction: float, test_fraction: float, salt: str = ""
) -> dict[str, list[Document]]:
    """Assign documents to splits by group (see the module docstring for tiny corpora).

    Documents keep their relative order inside each split. Raises :class:`UserError`
    when a split ends up without any non-whitespace text.
    """
    check_fractions(val_fraction, test_fraction)
    docs = list(documents)
    groups = sorted({d.group for d in docs}, key=lambda g: (_unit(g, salt), g))
    if not groups:
        raise UserError("data: the corpus has no documents (point it at some text)")
    if len(groups) < 3:
        out = _split_by_position(docs, val_fraction, test_fraction)
    else:
        of = {g: split_of(g, val_fraction, test_fraction, salt) for g in groups}
        counts = {s: sum(1 for g in groups if of[g] == s) for s in SPLITS}
        if min(counts.values()) == 0:
            # groups sorted by hash are [test..., val..., train...]; keep that order and
            # take one group at a time from the largest split for each empty one
            for s in SPLITS:
                while counts[s] == 0:
                    donor = max(SPLITS, key=lambda k: counts[k])
                    counts[donor] -= 1
                    counts[s] += 1
            bounds = {"test": counts["test"], "val": counts["test"] + counts["val"]}
            of = {
                g: "test" if i < bounds["test"] else "val" if i < bounds["val"] else "train"
                for i, g in enumerate(groups)
            }
        out = {s: [] for s in SPLITS}
        for d in docs:
            out[of[d.group]].append(d)
    for s in SPLITS:
        if not any(d.text.strip() for d in out[s]):
            raise _empty_split_error(s)
    return out


def _split_by_position(
    docs: list[Document], val_fraction: float, test_fraction: float
) -> dict[str, list[Document]]:
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d in docs:
        n = len(d.text)
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        n_train = n - n_val - n_test
        if n_train < 1:
            continue
        cuts = (0, n_train, n_train + n_val, n)
        for s, a, b in zip(SPLITS, cuts, cuts[1:], strict=False):
            out[s].append(Document(d.group, d.text[a:b]))
    return out


def content_sha256(documents: Iterable[Document]) -> str:
    """sha256 over (group, text) pairs in order, length-prefixed so it is unambiguous."""
    h = hashlib.sha256()
    for d in documents:
        for part in (d.group.encode("utf-8"), d.text.encode("utf-8")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


# ----------------------------------------------------------------------------- stdlib

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _stdlib_root(root: str | None) -> Path:
    return Path(root if root is not None else sysconfig.get_paths()["stdlib"])


def _stdlib_sources(root: Path, max_files: int | None) -> list[tuple[str, bytes]]:
    """``(relative posix path, UTF-8 bytes)`` of the non-test stdlib sources, sorted.

    ``max_files`` keeps that many files evenly spaced over the sorted list (so a small
    corpus still spans many modules and splits).
    """
    if max_files is not None and (not isinstance(max_files, int) or max_files < 1):
        raise UserError(f"data.max_files: must be a positive integer or null, got {max_files!r}")
    if not root.is_dir():
        raise UserError(f"data.root: no such folder '{root}' (point it at a Python stdlib, or null)")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for f in filenames:
            if f.endswith(".py") and not f.startswith("test_"):
                paths.append(Path(dirpath, f).relative_to(root).as_posix())
    out = []
    for rel in sorted(paths):
        data = (root / rel).read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few legacy files are Latin-1; they are not worth a special case
        out.append((rel, data))
    if max_files is not None and max_files < len(out):
        out = [out[i * len(out) // max_files] for i in range(max_files)]
    return out


def _top_level(rel: str) -> str:
    first = rel.split("/", 1)[0]
    return first.removesuffix(".py")


@dataclass
class _Stdlib:
    max_files: int | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    root: str | None = None

    def _sources(self) -> list[tuple[str, bytes]]:
        check_fractions(self.val_fraction, self.test_fraction)
        return _stdlib_sources(_stdlib_root(self.root), self.max_files)

    def files(self) -> list[str]:
        """Relative paths of the source files used, in order."""
        return [rel for rel, _ in self._sources()]

    def _provenance(self, n_files: int) -> dict:
        return {
            "version": sys.version.split()[0] if self.root is None else "custom root",
            "root": str(_stdlib_root(self.root)),
            "n_files": n_files,
            "max_files": self.max_files,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }


@dataclass
class StdlibCode(_Stdlib):
    """Non-test ``.py`` sources of the running interpreter's standard library.

    One document per file, grouped by top-level module (``email/mime/text.py`` ->
    ``email``), in sorted path order. Skipped: ``site-packages``, ``test`` / ``tests`` /
    ``idle_test`` packages, ``__pycache__``, ``test_*.py`` and files that are not UTF-8.
    ``max_files`` keeps that many files evenly spaced over the sorted list (null: all);
    ``root`` overrides the stdlib folder (tests point it at a fixture tree).
    """

    name = "stdlib_code"

    def documents(self) -> Iterator[Document]:
        for rel, data in self._sources():
            yield Document(_top_level(rel), data.decode("utf-8"))

    def describe(self) -> dict:
        docs = list(self.documents())
        return {"source": "python stdlib .py sources (non-test)",
                "sha256": content_sha256(docs), **self._provenance(len(docs))}


PROSE_EXTRACTOR_VERSION = 1
_PRAGMAS = ("noqa", "type:", "pragma", "-*-", "!", "fmt:", "pylint:")


def extract_prose(source: str) -> str:
    """Docstrings (module, class, function) and comments of ``source``, in source order.

    Docstrings are cleaned with :func:`inspect.cleandoc`; consecutive comment lines form
    one paragraph; paragraphs are separated by a blank line. Comments without letters
    (rulers like ``# ----``) and tool pragmas are dropped. Returns "" for a file that
    does not parse.
    """
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError, ValueError):
        return ""
    pieces: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                text = inspect.cleandoc(body[0].value.value).strip()
                if text:
                    pieces.append((body[0].lineno, text))
    block: list[str] = []
    block_start = last_line = -1
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        text = tok.string.lstrip("#").strip()
        if not any(c.isalpha() for c in text) or text.lower().startswith(_PRAGMAS):
            continue
        if block and line != last_line + 1:
            pieces.append((block_start, "\n".join(block)))
            block = []
        if not block:
            block_start = line
        block.append(text)
        last_line = line
    if block:
        pieces.append((block_start, "\n".join(block)))
    pieces.sort(key=lambda p: p[0])
    return "\n\n".join(text for _, text in pieces) + "\n" if pieces else ""


@dataclass
class StdlibProse(_Stdlib):
    """Docstrings and comments of the :class:`StdlibCode` files: natural-language text.

    One document per file that has any prose (:func:`extract_prose`), grouped by
    top-level module exactly like :class:`StdlibCode`, so a module held out of one
    corpus is held out of the other. ``sha256`` in :meth:`describe` hashes the source
    files: extracting the prose takes seconds, and the extractor (versioned by
    :data:`PROSE_EXTRACTOR_VERSION`) determines the text from them exactly.
    """

    name = "stdlib_prose"

    def documents(self) -> Iterator[Document]:
        for rel, data in self._sources():
            text = extract_prose(data.decode("utf-8"))
            if text:
                yield Document(_top_level(rel), text)

    def describe(self) -> dict:
        sources = self._sources()
        h = hashlib.sha256()
        for rel, data in sources:
            for part in (rel.encode(), data):
                h.update(len(part).to_bytes(8, "little"))
                h.update(part)
        out = {"source": "docstrings and comments of the python stdlib (non-test)",
               "sha256": h.hexdigest(),
               "sha256_of": "source files; the text is a pure function of them",
               **self._provenance(len(sources))}
        out["version"] += f"+prose-extractor-v{PROSE_EXTRACTOR_VERSION}"
        return out


# ----------------------------------------------------------------------------- synthetic


@lru_cache(maxsize=2)
def _synthetic_documents(seed: int, n_sentences: int, per_doc: int) -> tuple[Document, ...]:
    sentences = pcfg.sample_sentences(np.random.default_rng(seed), n_sentences)
    return tuple(
        Document(f"chunk{i // per_doc:06d}", "".join(sentences[i:i + per_doc]))
        for i in range(0, n_sentences, per_doc)
    )


@dataclass
class Synthetic:
    """Sentences from the fixed PCFG of :mod:`sandbox.data.pcfg`, with a known entropy.

    ``sentences_per_doc`` consecutive sentences form one document and one group
    (``chunk000042``), so splits are by chunk. :meth:`true_bits_per_byte` is the exact
    entropy rate of the text, in bits per UTF-8 byte of text: the document separators
    that :func:`~sandbox.data.prepare.prepare` inserts are special tokens, not text, and
    are not counted (they sit at sentence boundaries every ``sentences_per_doc``
    sentences, so they carry almost no information).
    """

    seed: int = 0
    n_sentences: int = 200_000
    sentences_per_doc: int = 1000
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    name = "synthetic"

    def _check(self) -> None:
        check_fractions(self.val_fraction, self.test_fraction)
        for field in ("seed", "n_sentences", "sentences_per_doc"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < (0 if field == "seed" else 1):
                kind = "non-negative" if field == "seed" else "positive"
                raise UserError(f"data.{field}: must be a {kind} integer, got {v!r}")

    def documents(self) -> Iterator[Document]:
        self._check()
        yield from _synthetic_documents(self.seed, self.n_sentences, self.sentences_per_doc)

    def true_bits_per_byte(self) -> float:
        return pcfg.bits_per_byte()

    def describe(self) -> dict:
        a = pcfg.analytic()
        return {
            "source": "synthetic PCFG (sandbox.data.pcfg)",
            "version": pcfg.VERSION,
            "sha256": content_sha256(self.documents()),
            "seed": self.seed,
            "n_sentences": self.n_sentences,
            "sentences_per_doc": self.sentences_per_doc,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "true_bpb": a["bits_per_byte"],
            "bits_per_sentence": a["bits_per_sentence"],
            "bytes_per_sentence": a["bytes_per_sentence"],
        }


# ----------------------------------------------------------------------------- local files


@dataclass
class TextFiles:
    """Any local text: a file, a folder (all regular files below it, recursively, sorted;
    hidden files and folders skipped) or a glob (``data/**/*.txt``).

    One document per file, group = its path relative to the files' common folder. Every
    file must be UTF-8 unless ``encoding_errors`` names a codec error handler
    (``replace``, ``ignore``, ...).
    """

    path: str
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    encoding_errors: str = "strict"
    name = "text_files"

    def _files(self) -> tuple[Path, list[Path]]:
        check_fractions(self.val_fraction, self.test_fraction)
        try:
            codecs.lookup_error(self.encoding_errors)
        except (LookupError, TypeError):
            raise UserError(
                f"data.encoding_errors: unknown error handler {self.encoding_errors!r} "
                "(use strict, replace or ignore)"
            ) from None
        if not isinstance(self.path, (str, os.PathLike)) or str(self.path) in ("", "???"):
            raise UserError("data.path: not set (point data.path at a text file, folder or glob)")
        path = os.path.expanduser(os.fspath(self.path))
        if glob.has_magic(path):
            files = sorted(Path(p) for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not files:
                raise UserError(f"data.path: glob '{self.path}' matches no files (fix the pattern)")
            root = Path(os.path.commonpath([str(f.parent) for f in files]))
        elif os.path.isfile(path):
            files, root = [Path(path)], Path(path).parent
        elif os.path.isdir(path):
            root, files = Path(path), []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                files += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
            files = sorted(f for f in files if f.is_file())
            if not files:
                raise UserError(f"data.path: folder '{self.path}' holds no files (add text files to it)")
        else:
            raise UserError(
                f"data.path: no such file or folder '{self.path}' "
                "(point data.path at a text file, folder or glob)"
            )
        return root, files

    def _read(self, f: Path) -> str:
        data = f.read_bytes()
        try:
            return data.decode("utf-8", errors=self.encoding_errors)
        except UnicodeDecodeError as e:
            raise UserError(
                f"data.path: file '{f}' is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                f"{e.start}); re-encode it as UTF-8 or remove it (or set data.encoding_errors=replace)"
            ) from None

    def documents(self) -> Iterator[Document]:
        root, files = self._files()
        empty = True
        for f in files:
            text = self._read(f)
            empty = empty and not text.strip()
            yield Document(f.relative_to(root).as_posix(), text)
        if empty:
            raise UserError(
                f"data.path: every file under '{self.path}' is empty or whitespace (add some text)"
            )

    def describe(self) -> dict:
        root, _ = self._files()
        docs = list(self.documents())
        sha = content_sha256(docs)
        return {
            "source": f"text files at {os.path.abspath(os.path.expanduser(self.path))}",
            "version": f"content-{sha[:12]}",
            "sha256": sha,
            "n_files": len(docs),
            "root": str(root.resolve()),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "encoding_errors": self.encoding_errors,
        }


__all__ = [
    "SPLITS",
    "Document",
    "StdlibCode",
    "StdlibProse",
    "Synthetic",
    "TextFiles",
    "check_fractions",
    "content_sha256",
    "extract_prose",
    "split_documents",
    "split_of",
]
