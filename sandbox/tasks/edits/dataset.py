"""Edit items, the on-the-fly training stream, and the frozen val / test sets with their cache.

``StdlibEdits(seed=0).load(cache_dir)`` returns :class:`EditsData`: the functions of each
split, the frozen ``val`` / ``test`` items, the manifest, and :meth:`EditsData.sampler` for
training items generated on the fly.

Design choices:

* **One record.** :class:`EditItem` holds everything a trainer or evaluator needs: the
  instruction, ``before``, ``after`` (the whole edited function), ``udiff`` (hunks relative to
  the function, :func:`~sandbox.tasks.edits.udiff.udiff`), kind and sub-kinds, tier, the number
  of changed tokens (and its bin), provenance, and the edit's parameters (so a prediction can
  be checked against the same verifier).
* **Training edits are a pure function of ``(seed, index)``.** :class:`EditSampler` seeds a
  ``random.Random`` with ``"stdlib_edits/train/{seed}/{index}"`` and draws the kind, the
  function and the edit from it; any index can be produced in any order, on any host, so
  resuming or sharding needs no state. Train edits use the ``train`` name pool.
* **Frozen sets.** Val / test items are generated once from the near-duplicate-filtered
  functions of their split with the held-out name pool, for every kind and tier, and written
  as JSONL. Each (kind, tier) gets an equal share of ``per_kind`` (a tier that runs short
  hands its remainder to the other). Functions are visited in a seeded order; when one pass
  over the functions does not fill the quota, further passes draw *another* edit of the same
  functions (a different ``random.Random`` per pass), so a function can carry several edits
  of one kind, never the same instruction twice. The manifest records the distinct functions
  and the most edits per function. Every frozen item is re-verified before it is written.
* **Cache.** ``<cache>/stdlib_edits/functions-<key>.json`` holds the extracted functions
  (key: stdlib sha256, :data:`~sandbox.tasks.edits.extract.EXTRACT_VERSION`, Python version,
  module subset); ``<cache>/stdlib_edits/sets-<key>/`` holds ``val.jsonl``, ``test.jsonl`` and
  ``manifest.json`` (key: the same plus :data:`GENERATOR_VERSION` and every setting). Files
  are written with :func:`sandbox.core.runfiles.atomic_write_text`, the manifest last; it records
  the sha256 of each JSONL file, and a folder whose files do not match is rebuilt. Nothing from
  the stdlib is ever written anywhere else.
* The cache dir is ``$SANDBOX_CACHE`` when set, else ``.cache/sandbox`` (as for the other
  corpora, see ``conf/config.yaml``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from sandbox.core.errors import UserError
from sandbox.core.runfiles import atomic_write_text
from sandbox.data.corpora import StdlibCode, split_of
from sandbox.tasks.edits.edit import Edit
from sandbox.tasks.edits.extract import (
    EXTRACT_VERSION,
    TIERS,
    ExtractStats,
    Function,
    check_tiers,
    extract_functions,
    stdlib_hash,
    stdlib_root,
)
from sandbox.tasks.edits.kinds import check_kinds, get_kind, verify
from sandbox.tasks.edits.names import get_pool
from sandbox.tasks.edits.source import DIFF_BINS, diff_size_bin, n_changed_tokens
from sandbox.tasks.edits.splits import SPLITS, assign_splits, filter_near_duplicates
from sandbox.tasks.edits.udiff import udiff

#: bump when generated edits, instructions or the item format change
GENERATOR_VERSION = 2  # 2: no reads before a binding, no required params on protocol dunders / properties
FROZEN_SPLITS = ("val", "test")
_ATTEMPTS = 200  # functions tried per training item before giving up
_CODE = StdlibCode()  # its default split fractions, to say whether held-out modules agree


def default_cache_dir() -> Path:
    return Path(os.environ.get("SANDBOX_CACHE", ".cache/sandbox")).expanduser()


# ----------------------------------------------------------------------------- items


@dataclass(frozen=True)
class EditItem:
    id: str  # sha256 of (before, instruction), 16 hex digits
    instruction: str
    before: str
    after: str  # the whole edited function (target format ``whole``)
    udiff: str | None  # hunks relative to the function (format ``udiff``); None: not computed yet
    kind: str  # "rename", ..., "compose2", "compose3"
    sub_kinds: tuple[str, ...]  # (kind,) for a single edit, the steps' kinds for a composition
    tier: str  # tier of ``before``
    n_changed_tokens: int | None  # None in the training stream (only evaluation bins need it)
    module: str
    qualname: str
    top: str
    split: str
    edit: dict = field(default_factory=dict, repr=False)  # Edit.to_json() without "after"

    @property
    def diff_bin(self) -> str:
        return diff_size_bin(self.changed_tokens())

    def changed_tokens(self) -> int:
        if self.n_changed_tokens is None:
            return n_changed_tokens(self.before, self.after)
        return self.n_changed_tokens

    def diff_text(self) -> str:
        return udiff(self.before, self.after) if self.udiff is None else self.udiff

    def to_edit(self) -> Edit:
        return Edit.from_json({**self.edit, "after": self.after})

    def to_json(self) -> dict:
        d = asdict(self)
        d["sub_kinds"] = list(self.sub_kinds)
        return d

    @classmethod
    def from_json(cls, d: dict) -> EditItem:
        return cls(**{**d, "sub_kinds": tuple(d["sub_kinds"])})


def make_item(function: Function, edit: Edit, split: str = "train", lazy: bool = False) -> EditItem:
    """An item of ``edit`` on ``function``. ``lazy``: leave the udiff and the changed-token count
    to be computed on demand (the training stream: a Python tokenize pass per item that only
    the ``udiff`` format and the evaluation's bins read)."""
    before = function.source
    ident = hashlib.sha256(f"{before}\x00{edit.instruction}".encode()).hexdigest()[:16]
    e = edit.to_json()
    e.pop("after")
    return EditItem(ident, edit.instruction, before, edit.after, None if lazy else udiff(before, edit.after),
                    edit.kind, edit.sub_kinds, function.tier,
                    None if lazy else n_changed_tokens(before, edit.after),
                    function.module, function.qualname, function.top, split, e)


def _by_tier(functions: Sequence[Function], tiers: tuple[str, ...]) -> list[Function]:
    return [f for f in functions if f.tier in tiers]


def check_augment_renames(n) -> int:
    """``data.augment_renames`` (see :class:`EditSampler`), or a one-line refusal."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserError(f"data.augment_renames: must be an integer >= 0 (0: off), got {n!r}")
    return n


def check_kind_weights(weights, kinds) -> list[float]:
    """``data.kind_weights`` (kind -> relative weight; unnamed kinds weigh 1) as one weight per
    kind of ``kinds``, or a one-line refusal: keys must be drawn kinds, values non-negative
    numbers with a positive sum."""
    w = dict(weights or {})
    unknown = sorted(set(w) - set(kinds))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w.values())
    out = [float(w.get(k, 1.0)) for k in kinds] if numbers else []
    if unknown or not numbers or any(x < 0 for x in out) or sum(out) <= 0:
        raise UserError(f"data.kind_weights: keys must be trained kinds ({', '.join(kinds)}) and values "
                        f"non-negative numbers with a positive sum, got {w!r}")
    return out


class EditSampler:
    """Training items as a pure function of ``(seed, index)`` (see the module docstring).

    ``kinds`` / ``tiers``: which to draw (None: all), uniformly over kinds and then over the
    functions of the chosen tiers; ``weights`` (kind -> weight) changes the kind mix.

    ``augment_renames`` > 0: before its edit is drawn, the function gets up to that many
    consistent renames of a local or parameter (the ``rename`` kind's generator, this pool's
    names), so the same stdlib function recurs with other identifiers. Why: a small model that
    sees the few thousand training functions many times memorises them instead of reading the
    prompt (held-out loss 10x the training loss on the CPU recipe); fresh names make copying
    from the prompt the only way to get them right. The edit and its instruction are drawn on
    the renamed function, so the item is as verifiable as any other.
    """

    def __init__(self, functions: Sequence[Function], seed: int = 0,
                 kinds: Iterable[str] | None = None, tiers: Iterable[str] | None = None,
                 names: str = "train", weights: dict[str, float] | None = None, split: str = "train",
                 augment_renames: int = 0):
        self.augment_renames = check_augment_renames(augment_renames)
        self.kinds = check_kinds(kinds)
        self.tiers = check_tiers(tiers)
        self.functions = _by_tier(functions, self.tiers)
        if not self.functions:
            raise UserError(f"stdlib_edits: the {split} split has no functions of tier "
                            f"{'/'.join(self.tiers)}; choose other tiers or more modules")
        self.seed, self.split, self.names = seed, split, get_pool(names)
        self._weights = check_kind_weights(weights, self.kinds)

    def __getitem__(self, index: int) -> EditItem:
        rng = random.Random(f"stdlib_edits/{self.split}/{self.seed}/{int(index)}")
        kind = rng.choices(self.kinds, self._weights)[0]
        gen = get_kind(kind).generate
        for _ in range(_ATTEMPTS):
            f = self._augment(self.functions[rng.randrange(len(self.functions))], rng)
            edit = gen(f.source, rng, self.names)
            if edit is not None and edit.after != f.source:
                return make_item(f, edit, self.split, lazy=True)
        raise UserError(f"stdlib_edits: no {kind} edit found in {_ATTEMPTS} functions of the "
                        f"{self.split} split (tiers {'/'.join(self.tiers)}); choose other kinds")

    def _augment(self, f: Function, rng: random.Random) -> Function:
        """``f`` after up to ``augment_renames`` renames (class doc); ``f`` itself when off."""
        src = f.source
        for _ in range(self.augment_renames):
            e = get_kind("rename").generate(src, rng, self.names)
            if e is None:
                break
            src = e.after
        return f if src == f.source else replace(f, source=src)

    def batch(self, start: int, size: int) -> list[EditItem]:
        return [self[i] for i in range(start, start + size)]


# ----------------------------------------------------------------------------- frozen sets


def _quotas(per_kind: int, tiers: tuple[str, ...]) -> dict[str, int]:
    base, extra = divmod(per_kind, len(tiers))
    return {t: base + (i < extra) for i, t in enumerate(tiers)}


def _candidates(functions: list[Function], kind: str, split: str, seed: int, pool, max_passes: int):
    """Verified items of ``kind`` from ``functions`` (already in visiting order), pass after
    pass, never the same (function, instruction) twice."""
    gen = get_kind(kind).generate
    seen: set[tuple[str, str]] = set()
    for p in range(max_passes):
        for f in functions:
            rng = random.Random(f"stdlib_edits/{split}/{seed}/{kind}/{f.id}/{p}")
            edit = gen(f.source, rng, pool)
            if edit is None or (f.id, edit.instruction) in seen or edit.after == f.source:
                continue
            if not verify(f.source, edit.after, edit):
                continue  # never expected: tests/test_edits_data.py checks every generator
            seen.add((f.id, edit.instruction))
            yield make_item(f, edit, split)


def _fill(items: list, stream, target: int) -> None:
    while len(items) < target:
        item = next(stream, None)
        if item is None:
            return
        items.append(item)


def build_frozen(functions: Sequence[Function], split: str, seed: int, per_kind: int,
                 kinds: Iterable[str] | None = None, tiers: Iterable[str] | None = None,
                 names: str = "heldout", max_passes: int = 8, progress: bool = False) -> list[EditItem]:
    """``per_kind`` verified items of every kind for ``split`` (module docstring)."""
    kinds, tiers = check_kinds(kinds), check_tiers(tiers)
    pool = get_pool(names)
    out: list[EditItem] = []
    for kind in tqdm(kinds, disable=not progress, desc=f"frozen {split} set", unit="kind"):
        streams, got = {}, {t: [] for t in tiers}
        for tier in tiers:
            fs = [f for f in functions if f.tier == tier]
            random.Random(f"stdlib_edits/{split}/{seed}/{kind}/{tier}/order").shuffle(fs)
            streams[tier] = _candidates(fs, kind, split, seed, pool, max_passes)
        for tier, quota in _quotas(per_kind, tiers).items():
            _fill(got[tier], streams[tier], quota)
        for tier in tiers:  # a tier that ran short: the others make up for it
            _fill(got[tier], streams[tier], len(got[tier]) + per_kind - sum(len(v) for v in got.values()))
        items = [it for t in tiers for it in got[t]]
        if len(items) < per_kind:
            raise UserError(
                f"stdlib_edits: the {split} split yields only {len(items)} {kind} items of tier "
                f"{'/'.join(tiers)} from {len(functions)} functions (need {per_kind} per kind); "
                "use more modules, more tiers, or a smaller per-kind count")
        out += items
    return out


def frozen_counts(items: Sequence[EditItem]) -> dict:
    """Counts by kind and tier, by diff-size bin, and edits per function."""
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for it in items:
        by_kind[it.kind][it.tier] += 1
    per_fn = Counter(f"{it.module}:{it.qualname}:{it.before}" for it in items)
    fn_by_kind: dict[str, set] = defaultdict(set)
    for it in items:
        fn_by_kind[it.kind].add(f"{it.module}:{it.qualname}:{it.before}")
    bins = Counter(it.diff_bin for it in items)
    return {
        "items": len(items),
        "kind_tier": {k: dict(v) for k, v in by_kind.items()},
        "kind_distinct_functions": {k: len(v) for k, v in fn_by_kind.items()},
        "diff_bin": {b: bins.get(b, 0) for b in DIFF_BINS},
        "distinct_functions": len(per_fn),
        "max_edits_per_function": max(per_fn.values(), default=0),
        "mean_edits_per_function": round(len(items) / max(1, len(per_fn)), 3),
    }


# ----------------------------------------------------------------------------- the dataset


@dataclass
class EditsData:
    """Functions by split, frozen val / test items, manifest, and the training stream."""

    functions: dict[str, list[Function]]  # split -> functions (val / test: filtered)
    frozen: dict[str, list[EditItem]]  # "val" / "test" -> items
    manifest: dict
    dir: Path
    seed: int = 0

    def items(self, split: str, kinds: Iterable[str] | str | None = None,
              tiers: Iterable[str] | str | None = None) -> list[EditItem]:
        """Frozen items of ``split`` of the given kinds and tiers (None: all)."""
        if split not in self.frozen:
            raise UserError(f"split {split!r}: no frozen set; choose {' or '.join(self.frozen)} "
                            "(train items are generated on the fly: EditsData.sampler)")
        kinds, tiers = check_kinds(kinds), check_tiers(tiers)
        out = [it for it in self.frozen[split] if it.kind in kinds and it.tier in tiers]
        if not out:
            built = sorted({it.kind for it in self.frozen[split]})
            raise UserError(f"stdlib_edits {split}: no items of kind {'/'.join(kinds)} and tier "
                            f"{'/'.join(tiers)}; this set was built with kinds {', '.join(built)} "
                            f"and tiers {', '.join(self.manifest['settings']['tiers'])}")
        return out

    def sampler(self, seed: int | None = None, kinds: Iterable[str] | None = None,
                tiers: Iterable[str] | None = None, weights: dict[str, float] | None = None,
                split: str = "train", augment_renames: int = 0) -> EditSampler:
        """On-the-fly items of ``split`` (train: the train name pool; else held-out names)."""
        if split not in self.functions:
            raise UserError(f"split {split!r}: choose from {', '.join(self.functions)}")
        return EditSampler(self.functions[split], self.seed if seed is None else seed, kinds, tiers,
                           "train" if split == "train" else "heldout", weights, split, augment_renames)


@dataclass
class StdlibEdits:
    """The ``stdlib_edits`` code-edit data set (module docstring); constructing never raises.

    ``modules`` restricts the stdlib to those top-level modules and ``root`` points at another
    stdlib folder (both for tests and quick experiments); the ``min_*`` settings make sure the
    held-out splits have enough modules and functions (:func:`~.splits.assign_splits`).
    """

    seed: int = 0
    test_per_kind: int = 250
    val_per_kind: int = 100
    kinds: Sequence[str] | None = None
    tiers: Sequence[str] | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    min_test_functions: int = 1000
    min_val_functions: int = 500
    min_test_modules: int = 12
    min_val_modules: int = 8
    near_dup_threshold: float = 0.7
    max_passes: int = 8
    modules: Sequence[str] | None = None
    root: str | None = None
    name = "stdlib_edits"

    def settings(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("root",)}
        d["kinds"] = list(check_kinds(self.kinds))
        d["tiers"] = list(check_tiers(self.tiers))
        d["modules"] = None if self.modules is None else sorted(self.modules)
        return d

    def _check(self) -> None:
        for f in ("seed", "test_per_kind", "val_per_kind", "max_passes"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < (0 if f == "seed" else 1):
                what = "non-negative" if f == "seed" else "positive"
                raise UserError(f"stdlib_edits.{f}: must be a {what} integer, got {v!r}")
        if not 0 < self.near_dup_threshold <= 1:
            raise UserError("stdlib_edits.near_dup_threshold: must be in (0, 1], "
                            f"got {self.near_dup_threshold!r}")
        check_kinds(self.kinds)
        check_tiers(self.tiers)

    def load(self, cache_dir: str | os.PathLike | None = None, progress: bool = True,
             rebuild: bool = False) -> EditsData:
        """Load the frozen sets from the cache, building (and caching) them when missing."""
        self._check()
        cache = _cache_root(cache_dir)
        t0 = time.perf_counter()
        shash = stdlib_hash(self.root, self.modules)
        fn_key = _short_hash({"stdlib": shash, "extract": EXTRACT_VERSION, "python": sys.version,
                              "modules": self.settings()["modules"]})
        functions, ex_stats = _load_functions(cache / f"functions-{fn_key}.json", self, progress)
        settings = self.settings()
        key = _short_hash({"functions": fn_key, "generator": GENERATOR_VERSION, "settings": settings})
        folder = cache / f"sets-{key}"
        manifest = None if rebuild else _read_manifest(folder)
        if manifest is None:
            splits = self._split(functions)
            manifest = self._build(folder, splits, shash, ex_stats, progress, t0)
        else:
            splits = _read_splits(folder / "splits.json", functions)
        frozen = {s: [EditItem.from_json(json.loads(line))
                      for line in (folder / f"{s}.jsonl").read_text().splitlines() if line]
                  for s in FROZEN_SPLITS}
        return EditsData(splits[0], frozen, manifest, folder, self.seed)

    def _split(self, functions: list[Function]):
        of = assign_splits(functions, self.val_fraction, self.test_fraction, self.min_test_functions,
                           self.min_val_functions, self.min_test_modules, self.min_val_modules)
        by = {s: [f for f in functions if of[f.top] == s] for s in SPLITS}
        dup = {}
        for s in FROZEN_SPLITS:
            by[s], dup[s] = filter_near_duplicates(by[s], by["train"], self.near_dup_threshold)
        return by, of, dup

    def _build(self, folder: Path, splits, shash: str, ex_stats: dict, progress: bool, t0: float) -> dict:
        by, of, dup = splits
        counts, files = {}, {}
        t_gen = time.perf_counter()
        for s, per_kind in (("val", self.val_per_kind), ("test", self.test_per_kind)):
            items = build_frozen(by[s], s, self.seed, per_kind, self.kinds, self.tiers, "heldout",
                                 self.max_passes, progress)
            text = "".join(json.dumps(it.to_json(), sort_keys=True) + "\n" for it in items)
            atomic_write_text(folder / f"{s}.jsonl", text)
            files[f"{s}.jsonl"] = hashlib.sha256(text.encode()).hexdigest()
            counts[s] = frozen_counts(items)
        modules = {s: sorted(t for t, x in of.items() if x == s) for s in SPLITS}
        text = json.dumps({"module_split": of, "kept": {s: [f.id for f in by[s]] for s in FROZEN_SPLITS}},
                          sort_keys=True)
        atomic_write_text(folder / "splits.json", text)
        files["splits.json"] = hashlib.sha256(text.encode()).hexdigest()
        manifest = {
            "name": self.name,
            "generator_version": GENERATOR_VERSION,
            "extract_version": EXTRACT_VERSION,
            "python": sys.version,
            "python_version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "stdlib_root": str(stdlib_root(self.root)),
            "stdlib_sha256": shash,
            "seed": self.seed,
            "settings": self.settings(),
            "splits": {s: {"modules": modules[s], "n_modules": len(modules[s]),
                           "functions": {t: sum(f.tier == t for f in by[s]) for t in TIERS}}
                       for s in SPLITS},
            "near_duplicates": {"threshold": self.near_dup_threshold, **dup},
            "held_out_of_stdlib_code_train": all(
                split_of(t, _CODE.val_fraction, _CODE.test_fraction) != "train"
                for s in FROZEN_SPLITS for t in modules[s]),
            "extract": ex_stats,
            "counts": counts,
            "files": files,
            "name_pools": {"train": "train", "val": "heldout", "test": "heldout"},
            "seconds": {"total": round(time.perf_counter() - t0, 2),
                        "frozen_sets": round(time.perf_counter() - t_gen, 2)},
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        return manifest

    def describe(self) -> dict:
        self._check()
        return {"source": "functions of the python stdlib with generated, verified edits",
                "version": f"{sys.version.split()[0]}+edits-v{GENERATOR_VERSION}",
                "sha256": stdlib_hash(self.root, self.modules), **self.settings()}


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _cache_root(cache_dir) -> Path:
    root = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "stdlib_edits"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data cache dir '{root}': cannot create it ({e.strerror}); "
                        "point SANDBOX_CACHE at a writable folder") from None
    return root


def _load_functions(path: Path, cfg: StdlibEdits, progress: bool) -> tuple[list[Function], dict]:
    try:
        data = json.loads(path.read_text())
        return [Function.from_json(d) for d in data["functions"]], data["stats"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    stats = ExtractStats()
    functions = extract_functions(cfg.root, cfg.modules, progress, stats)
    st = {"files": stats.files, "unreadable": stats.unreadable, "unparsable": stats.unparsable,
          "functions_seen": stats.functions_seen, "kept": len(functions), "dropped": stats.dropped}
    atomic_write_text(path, json.dumps({"stats": st, "functions": [f.to_json() for f in functions]}))
    return functions, st


def _read_splits(path: Path, functions: list[Function]):
    """The split of a cached folder: ``(functions by split, module -> split, {})``."""
    data = json.loads(path.read_text())
    of, kept = data["module_split"], {s: set(ids) for s, ids in data["kept"].items()}
    by = {s: [f for f in functions if of.get(f.top) == s and (s == "train" or f.id in kept[s])]
          for s in SPLITS}
    return by, of, {}


def _read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete folder (every JSONL file present with its recorded sha256)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, digest in manifest["files"].items():
            if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
