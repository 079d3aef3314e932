"""Overlap of samples with reference text: n-gram divergence and copied training spans.

Pure numpy (no jax), so the evaluator and offline analysis can both use it.

API:

- ``ngram_jsd(samples, reference, n) -> float | None``: Jensen-Shannon divergence, in bits
  (log base 2, so in [0, 1]), between the pooled n-gram frequencies of ``samples`` and of
  ``reference``. Each argument is N 1-D integer arrays of token ids (lengths may differ) or
  an [N, L] integer array. n-grams never cross sequence boundaries. None when either side
  has no n-gram (every sequence shorter than ``n``).
- ``ngram_jsds(samples, reference, ns=(1, 2, 4)) -> dict``: ``{"jsd_1": ..., "jsd_2": ...,
  "jsd_4": ...}``.
- ``SpanIndex(data: bytes, span=32)``: the sorted unique 64-bit hashes (``.hashes``, uint64
  [K]) of every ``span``-byte window of the training bytes; ``SpanIndex.from_texts(texts,
  span=32)`` indexes documents without windows that straddle two of them.
  ``copied_share(texts) -> float | None`` is the fraction of all ``span``-byte windows
  (stride 1) of the texts' UTF-8 bytes found in the index, pooled over texts (None when no
  text has a full window); ``copied_per_text(texts) -> float64 [len(texts)]`` is the same
  per text (NaN for a text shorter than ``span`` bytes).

Design:

- n-gram counting: each n-gram is a row of an [G, n] array; rows are packed into one int64
  key (mixed radix over the id range of both sides) when the range allows, else viewed as
  one opaque ``np.void`` item per row. One ``np.unique`` over both sides' keys gives a shared
  vocabulary, ``np.bincount`` the two count vectors. No Python loop over n-grams.
- JSD is computed as ``(KL(P||M) + KL(Q||M)) / 2`` with ``M = (P + Q) / 2``, which equals
  ``H(M) - (H(P) + H(Q)) / 2`` but sums non-negative terms: no cancellation for nearly equal
  distributions, exactly 0 for identical ones (every ratio is 1) and exactly 1 for disjoint
  supports (every ratio is 2 and the counts of a side sum to its total exactly). Each side's
  term is weighted by integer counts / total, and the two terms are computed the same way,
  so swapping the arguments gives the same float.
- Window hashes: polynomial ``h = sum_j b[i+j] * B**(span-1-j) mod 2**64`` for a fixed odd
  64-bit base B, computed by Horner's rule as ``span`` vectorised uint64 passes (overflow
  wraps, which *is* the mod 2**64) over chunks of at most ``_CHUNK`` windows. Per chunk the
  hashes are deduplicated (sort + neighbour compare; not ``np.unique``, which numpy 2.4 runs
  as a slow hash table on large integer arrays) before the final deduplication, so the peak
  is about one chunk plus twice the unique hashes (8 bytes each), and less on repetitive
  corpora. 20 MB of stdlib source: ~1.5-2 s, peak ~280 MB, index 119 MB. Membership is
  ``np.searchsorted`` of the sorted queries in the sorted index.
- Collisions: a false hit needs a 64-bit hash of a novel window to equal one of the K
  indexed hashes, about K / 2**64 per window (1e-12 for K = 2e7): negligible. (The known
  Thue-Morse weakness of hashing mod 2**64 needs windows of thousands of bytes; at the
  default span of 32 it cannot occur.) A missed copy is impossible: equal bytes, equal hash.
- Documents: windows never cross text boundaries, neither in ``from_texts`` nor in the
  queried texts. Texts are concatenated into one buffer so that many short texts cost a few
  numpy passes, not a Python loop of ``span`` passes each; windows that straddle two texts
  are computed and then masked out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication by it is a bijection mod 2**64
_CHUNK = 1 << 22  # windows hashed per pass: 4M x 8 bytes = 32 MiB of hashes at a time


# --- n-gram divergence ------------------------------------------------------------------------
def _grams(seqs, n: int) -> np.ndarray:
    """All n-grams of the sequences as rows of an int64 [G, n] array, none across sequences."""
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        rows = [seqs]  # one sliding window over axis 1 serves every row at once
    else:
        rows = []
        for s in seqs:
            s = np.asarray(s)
            if s.ndim != 1:
                raise ValueError(f"each sequence must be 1-D token ids, got shape {s.shape}")
            rows.append(s[None])
    out = []
    for r in rows:
        if r.shape[1] < n:
            continue
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {r.dtype}")
        g = np.lib.stride_tricks.sliding_window_view(r.astype(np.int64, copy=False), n, axis=1)
        out.append(g.reshape(-1, n))
    return np.concatenate(out) if out else np.empty((0, n), np.int64)


def _keys(grams: np.ndarray) -> np.ndarray:
    """One sortable key per row of [G, n], equal exactly when the rows are equal."""
    g = grams
    lo, hi = int(g.min()), int(g.max())
    radix = hi - lo + 1
    if radix ** g.shape[1] <= np.iinfo(np.int64).max:
        # Mixed radix over the ids actually present: the usual case (vocab ** n < 2**63).
        key = g[:, 0] - lo
        for j in range(1, g.shape[1]):
            key = key * radix + (g[:, j] - lo)
        return key
    # Too many distinct ids for one int64: the row's raw bytes as one opaque item.
    g = np.ascontiguousarray(g)
    return g.view(np.dtype((np.void, g.dtype.itemsize * g.shape[1]))).ravel()


def ngram_jsd(samples, reference, n: int) -> float | None:
    """Jensen-Shannon divergence (bits, in [0, 1]) between the pooled n-gram frequencies of
    ``samples`` and ``reference`` (each N 1-D int arrays or an [N, L] int array). n-grams stay
    inside a sequence. None if either side has no n-gram."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gp, gq = _grams(samples, n), _grams(reference, n)
    if not len(gp) or not len(gq):
        return None
    # Keys over both sides together, so that both use the same id range / encoding.
    _, inv = np.unique(_keys(np.concatenate([gp, gq])), return_inverse=True)
    inv = inv.ravel()
    k = int(inv.max()) + 1
    cp = np.bincount(inv[:len(gp)], minlength=k).astype(np.float64)
    cq = np.bincount(inv[len(gp):], minlength=k).astype(np.float64)
    p, q = cp / len(gp), cq / len(gq)
    m2 = p + q  # 2 M

    def half(c, x, total):
        # sum_i x_i log2(x_i / M_i) with x_i = c_i / total, over the support of x.
        s = c > 0
        return float(np.dot(c[s], np.log2(2.0 * x[s] / m2[s]))) / total

    jsd = 0.5 * (half(cp, p, len(gp)) + half(cq, q, len(gq)))
    return min(max(jsd, 0.0), 1.0)  # rounding can step a hair outside [0, 1]


def ngram_jsds(samples, reference, ns: Iterable[int] = (1, 2, 4)) -> dict[str, float | None]:
    """``{"jsd_<n>": ngram_jsd(samples, reference, n)}`` for each n in ``ns``."""
    return {f"jsd_{n}": ngram_jsd(samples, reference, n) for n in ns}


# --- copied spans -----------------------------------------------------------------------------
def _window_hashes(buf: np.ndarray, span: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first window, uint64 hashes) for consecutive chunks of the ``len(buf) - span + 1``
    windows of a uint8 buffer; hash of window i = sum_j buf[i+j] * B**(span-1-j) mod 2**64."""
    n_win = len(buf) - span + 1
    for start in range(0, max(n_win, 0), _CHUNK):
        w = min(_CHUNK, n_win - start)
        h = np.zeros(w, np.uint64)
        for j in range(span):  # Horner: h = h * B + next byte, in place; uint64 wraps mod 2**64
            np.multiply(h, _BASE, out=h)
            np.add(h, buf[start + j:start + j + w], out=h, casting="unsafe")
        yield start, h


def _concat(texts) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of all texts as one uint8 buffer, and each text's end offset [T]."""
    parts = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    ends = np.cumsum([len(p) for p in parts], dtype=np.int64)
    return np.frombuffer(b"".join(parts), np.uint8), ends


def _owner(starts: np.ndarray, ends: np.ndarray, span: int) -> np.ndarray:
    """Text index of each window start, or -1 where the window runs past its text's end."""
    doc = np.searchsorted(ends, starts, side="right")
    inside = starts + span <= ends[np.minimum(doc, len(ends) - 1)]
    return np.where(inside, doc, -1)


def _check_span(span: int) -> int:
    if not isinstance(span, int | np.integer) or span < 1:
        raise ValueError(f"span must be a positive number of bytes, got {span!r}")
    return int(span)


def _unique_hashes(buf: np.ndarray, span: int, ends: np.ndarray | None) -> np.ndarray:
    """Sorted unique hashes (uint64 [K]) of the windows of ``buf``; with ``ends`` (document end
    offsets) only of the windows inside one document."""
    parts = []
    for start, h in _window_hashes(buf, span):
        if ends is not None:
            h = h[_owner(np.arange(start, start + len(h)), ends, span) >= 0]
        parts.append(_sorted_unique(h))  # dedupe per chunk: bounds the peak on repetitive data
    if not parts:
        return np.empty(0, np.uint64)
    if len(parts) == 1:
        return parts[0]
    joined = np.concatenate(parts)
    parts.clear()  # free the per-chunk arrays before the sort's own allocations
    return _sorted_unique(joined)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` by an in-place sort (``x`` is overwritten). numpy 2.4's ``np.unique``
    hashes large integer arrays: 15 s and 1 GB for 15M uint64 where sorting takes 0.3 s."""
    x.sort()
    keep = np.empty(len(x), bool)
    keep[:1] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


class SpanIndex:
    """Sorted unique 64-bit hashes of every ``span``-byte window of training bytes.

    ``hashes``: uint64 [K]. See the module docstring for the hash and its collision rate."""

    def __init__(self, data: bytes | bytearray | memoryview, span: int = 32):
        self.span = _check_span(span)
        if isinstance(data, str):
            raise TypeError("SpanIndex wants bytes; use SpanIndex.from_texts for str documents")
        self.hashes = _unique_hashes(np.frombuffer(data, np.uint8), self.span, None)

    @classmethod
    def from_texts(cls, texts: Sequence[str], span: int = 32) -> SpanIndex:
        """Index the UTF-8 bytes of each document; no window crosses from one to the next."""
        index = cls(b"", span)
        buf, ends = _concat(texts)
        index.hashes = _unique_hashes(buf, index.span, ends)
        return index

    def __len__(self) -> int:
        return len(self.hashes)

    def _counts(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """(windows found in the index, windows) per text, int64 [T] each."""
        buf, ends = _concat(texts)
        lengths = np.diff(ends, prepend=0)
        windows = np.maximum(lengths - self.span + 1, 0)
        hits = np.zeros(len(ends), np.int64)
        if not len(self.hashes):
            return hits, windows
        for start, h in _window_hashes(buf, self.span):
            doc = _owner(np.arange(start, start + len(h)), ends, self.span)
            keep = doc >= 0
            h, doc = h[keep], doc[keep]
            # Sorted queries let searchsorted narrow each search from the last one: ~10x faster
            # than random probes into a large index.
            order = np.argsort(h)
            h, doc = h[order], doc[order]
            pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
            hits += np.bincount(doc[self.hashes[pos] == h], minlength=len(ends))
        return hits, windows

    def copied_per_text(self, texts: Sequence[str]) -> np.ndarray:
        """Share of each text's ``span``-byte windows found in the index, float64 [T]; NaN for a
        text shorter than ``span`` bytes."""
        hits, windows = self._counts(texts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(windows > 0, hits / np.maximum(windows, 1), np.nan)

    def copied_share(self, texts: Sequence[str]) -> float | None:
        """Share of all ``span``-byte windows of all texts (pooled) found in the index; None if
        no text is ``span`` bytes long."""
        hits, windows = self._counts(texts)
        total = int(windows.sum())
        return int(hits.sum()) / total if total else None
