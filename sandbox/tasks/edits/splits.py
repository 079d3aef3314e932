"""Train / val / test splits by top-level module, and a near-duplicate filter against train.

Design choices:

* **Whole modules, stable order.** Top-level modules are ordered by the same stable hash as
  :func:`sandbox.data.corpora.split_of` (``sha256(salt + module)``). Test takes modules from
  the front of that order until it holds ``test_fraction`` of the functions *and* at least
  ``min_test_functions`` functions and ``min_test_modules`` modules; val takes the next
  modules the same way; the rest is train. With the default salt the front of the order is
  the same modules ``stdlib_code`` holds out (its test split, then its val split), so a model
  pre-trained on ``stdlib_code``'s train split has not seen edits' test modules as long as
  edits' held-out modules stay within ``stdlib_code``'s held-out ones; the manifest records
  whether they do (``held_out_of_stdlib_code_train``). A module never straddles splits.
* **Near duplicates.** A function is reduced to normalised tokens (no comments, docstring or
  layout tokens; identifiers kept; every number ``0`` and every string ``''``), then to the set
  of its k-token shingles (k = 5; the whole sequence when shorter). A val / test function is
  dropped when its normalised tokens equal a train function's, or when the Jaccard similarity
  of its shingles to some train function's is at least ``threshold``. Candidates come from
  MinHash (64 permutations of 32-bit shingle hashes, numpy) with LSH banding (16 bands of 4
  rows: pairs at Jaccard 0.7 collide with probability ~0.98), and every candidate's Jaccard is
  computed exactly, so the filter has no false positives and very few misses. The whole
  stdlib takes about a second.
* Duplicates *within* val / test (same normalised tokens) keep only their first function, so
  the frozen sets hold distinct functions.
"""

from __future__ import annotations

import hashlib
import io
import tokenize
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sandbox.core.errors import UserError
from sandbox.data.corpora import _unit as module_unit
from sandbox.tasks.edits.extract import Function

SPLITS = ("train", "val", "test")
SHINGLE = 5
N_PERM, BANDS = 64, 16
_PRIME = 4294967291  # largest prime below 2**32
_DROP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENDMARKER}


class _Tok(NamedTuple):
    type: int
    string: str
    line: int


def module_order(tops, salt: str = "") -> list[str]:
    """Top-level modules in the stable hash order of :func:`sandbox.data.corpora.split_of`."""
    return sorted(set(tops), key=lambda t: (module_unit(t, salt), t))


def assign_splits(functions: Sequence[Function], val_fraction: float = 0.05,
                  test_fraction: float = 0.05, min_test_functions: int = 1000,
                  min_val_functions: int = 500, min_test_modules: int = 12,
                  min_val_modules: int = 8, salt: str = "") -> dict[str, str]:
    """Top-level module -> split (see the module docstring)."""
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < v < 1:
            raise UserError(f"{name}: must be in (0, 1), got {v!r}")
    counts: dict[str, int] = defaultdict(int)
    for f in functions:
        counts[f.top] += 1
    order = module_order(counts, salt)
    if len(order) < 3:
        raise UserError(f"stdlib_edits: only {len(order)} top-level module(s) with usable functions; "
                        "need at least 3 to split by module (use more modules)")
    total = sum(counts.values())
    out: dict[str, str] = {}
    i = 0
    for split, frac, min_f, min_m in (("test", test_fraction, min_test_functions, min_test_modules),
                                      ("val", val_fraction, min_val_functions, min_val_modules)):
        n_f = n_m = 0
        while i < len(order) - 1 and (n_m == 0 or n_f < max(frac * total, min_f) or n_m < min_m):
            out[order[i]] = split
            n_f += counts[order[i]]
            n_m += 1
            i += 1
    for t in order[i:]:
        out[t] = "train"
    if "val" not in out.values() or "train" not in out.values():
        raise UserError(f"stdlib_edits: {total} functions in {len(order)} modules leave no "
                        "train or val modules; lower the min_* split settings or use more modules")
    return out


# ----------------------------------------------------------------------------- near duplicates


def normalized_tokens(src: str) -> list[str]:
    """Tokens of a function without comments, layout and docstring; literals made generic."""
    try:
        toks = [_Tok(t[0], t[1], t[2][0]) for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t[0] not in _DROP]
    except (tokenize.TokenError, SyntaxError):
        return src.split()
    skip = _docstring_tokens(toks)
    out = []
    for i, t in enumerate(toks):
        if i in skip:
            continue
        if t.type == tokenize.STRING:
            out.append("''")
        elif t.type == tokenize.NUMBER:
            out.append("0")
        else:
            out.append(t.string)
    return out


def _docstring_tokens(toks) -> range:
    """Indices of the docstring's STRING tokens: the strings right after the ``def`` header's
    colon (at bracket depth 0), if a statement ends after them."""
    depth, start = 0, 0
    while start < len(toks) and toks[start].string != "def":
        start += 1
    for i in range(start, len(toks)):
        s = toks[i].string
        depth += s in ("(", "[", "{")
        depth -= s in (")", "]", "}")
        if depth == 0 and s == ":" and toks[i].type == tokenize.OP:
            break
    else:
        return range(0)
    j = i + 1
    while j < len(toks) and toks[j].type == tokenize.STRING:
        j += 1
    if j > i + 1 and (j == len(toks) or toks[j].line > toks[j - 1].line or toks[j].string == ";"):
        return range(i + 1, j)
    return range(0)


def _h32(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=4).digest(), "little")


def shingles(toks: list[str], k: int = SHINGLE) -> frozenset[int]:
    if len(toks) <= k:
        return frozenset([_h32("\x00".join(toks))])
    return frozenset(_h32("\x00".join(toks[i:i + k])) for i in range(len(toks) - k + 1))


class _MinHash:
    def __init__(self, n_perm: int = N_PERM, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, n_perm, dtype=np.uint64)[:, None]
        self.b = rng.integers(0, _PRIME, n_perm, dtype=np.uint64)[:, None]

    def __call__(self, sh: frozenset[int]) -> np.ndarray:
        h = np.fromiter(sh, dtype=np.uint64, count=len(sh))[None, :]
        return ((self.a * h + self.b) % _PRIME).min(axis=1)


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """MinHash-LSH index of reference sources; :meth:`match` finds a near duplicate."""

    def __init__(self, sources: Sequence[str], threshold: float = 0.7):
        self.threshold = threshold
        self._mh = _MinHash()
        self._rows = N_PERM // BANDS
        self._exact: set[str] = set()
        self._sh: list[frozenset[int]] = []
        self._buckets: dict[tuple, list[int]] = defaultdict(list)
        for src in sources:
            toks = normalized_tokens(src)
            self._exact.add("\x00".join(toks))
            sh = shingles(toks)
            idx = len(self._sh)
            self._sh.append(sh)
            for key in self._keys(sh):
                self._buckets[key].append(idx)

    def _keys(self, sh: frozenset[int]) -> list[tuple]:
        sig = self._mh(sh)
        r = self._rows
        return [(band, sig[band * r:(band + 1) * r].tobytes()) for band in range(BANDS)]

    def match(self, src: str) -> float:
        """Highest Jaccard similarity to a reference found (1.0 for equal normalised tokens;
        0.0 when no candidate reaches the threshold)."""
        toks = normalized_tokens(src)
        if "\x00".join(toks) in self._exact:
            return 1.0
        sh = shingles(toks)
        cands = {i for key in self._keys(sh) for i in self._buckets.get(key, ())}
        best = max((jaccard(sh, self._sh[i]) for i in cands), default=0.0)
        return best if best >= self.threshold else 0.0


def filter_near_duplicates(held_out: Sequence[Function], train: Sequence[Function],
                           threshold: float = 0.7) -> tuple[list[Function], dict]:
    """``held_out`` without near duplicates of ``train`` nor exact duplicates among
    themselves (first kept); and counts of what was dropped."""
    index = NearDuplicateIndex([f.source for f in train], threshold)
    kept, seen = [], set()
    stats = {"near_duplicate_of_train": 0, "duplicate_within_split": 0}
    for f in held_out:
        if index.match(f.source) > 0:
            stats["near_duplicate_of_train"] += 1
            continue
        key = "\x00".join(normalized_tokens(f.source))
        if key in seen:
            stats["duplicate_within_split"] += 1
            continue
        seen.add(key)
        kept.append(f)
    return kept, stats
