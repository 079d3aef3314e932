"""Overlap statistics (sandbox.eval.overlap) against hand-computed values and brute force.

n-gram JSD: the exact endpoints (0 and 1 bit), a hand-computed case, sequence boundaries,
both key encodings (packed int64 and raw-bytes void) against a Counter reference.
SpanIndex: verbatim copies, novel bytes, a hand-counted half copy, document boundaries,
UTF-8, and a Python set of byte strings as the brute-force reference (also across chunks).
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from sandbox.eval import overlap
from sandbox.eval.overlap import SpanIndex, ngram_jsd, ngram_jsds


# --- n-gram JSD -------------------------------------------------------------------------------
def brute_jsd(samples, reference, n):
    """H(M) - (H(P) + H(Q)) / 2 from Python Counters of n-gram tuples."""
    def dist(seqs):
        c = Counter(tuple(s[i:i + n]) for s in map(list, seqs) for i in range(len(s) - n + 1))
        total = sum(c.values())
        return {k: v / total for k, v in c.items()}

    def h(d):
        return -sum(v * math.log2(v) for v in d.values() if v > 0)

    p, q = dist(samples), dist(reference)
    m = {k: (p.get(k, 0) + q.get(k, 0)) / 2 for k in set(p) | set(q)}
    return h(m) - (h(p) + h(q)) / 2


def random_seqs(rng, count, vocab, max_len):
    return [rng.integers(0, vocab, rng.integers(0, max_len + 1)) for _ in range(count)]


def test_identical_distributions_give_exactly_zero():
    s = [np.array([3, 1, 4, 1, 5]), np.array([9, 2, 6])]
    assert ngram_jsd(s, s, 1) == 0.0
    assert ngram_jsd(s, s + s, 2) == 0.0  # same frequencies from twice the counts


def test_disjoint_supports_give_exactly_one_bit():
    assert ngram_jsd([np.array([0, 1, 2, 0])], [np.array([3, 4]), np.array([5])], 1) == 1.0
    # Same unigrams, disjoint bigrams: {(0,1), (1,0)} against {(0,0), (1,1)}.
    samples, reference = [np.array([0, 1, 0, 1])], [np.array([0, 0]), np.array([1, 1])]
    assert ngram_jsd(samples, reference, 1) == 0.0
    assert ngram_jsd(samples, reference, 2) == 1.0


def test_hand_computed_case():
    # P = [1/2, 1/2, 0], Q = [0, 1/2, 1/2], M = [1/4, 1/2, 1/4]: KL(P||M) = KL(Q||M) = 1/2 bit.
    assert ngram_jsd([np.array([0, 1])], [np.array([1, 2])], 1) == pytest.approx(0.5, abs=1e-12)


def test_ngrams_do_not_cross_sequence_boundaries():
    # Samples' bigrams {(1,2), (3,4)}; reference {(1,2), (2,3), (3,4)}. Crossing the boundary
    # would add (2,3) to the samples and make the two equal (JSD 0).
    samples, reference = [np.array([1, 2]), np.array([3, 4])], [np.array([1, 2, 3, 4])]
    # P = [1/2, 0, 1/2], Q = [1/3, 1/3, 1/3], M = [5/12, 1/6, 5/12].
    expected = 0.5 * (math.log2(6 / 5) + (2 / 3) * math.log2(4 / 5) + 1 / 3)
    assert ngram_jsd(samples, reference, 2) == pytest.approx(expected, abs=1e-12)
    assert ngram_jsd([np.array([1, 2, 3, 4])], reference, 2) == 0.0


def test_none_without_ngrams():
    s = [np.array([1, 2, 3])]
    assert ngram_jsd([], s, 1) is None
    assert ngram_jsd(s, [], 1) is None
    assert ngram_jsd(s, [np.array([1, 2, 3])], 4) is None  # too short for 4-grams
    assert ngram_jsd(np.zeros((3, 2), np.int32), s, 2) is not None
    assert ngram_jsd(np.zeros((3, 2), np.int32), s, 3) is None
    assert ngram_jsds(s, s, ns=(1, 4)) == {"jsd_1": 0.0, "jsd_4": None}


def test_symmetric_and_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4):
        a, b = random_seqs(rng, 30, 4, 12), random_seqs(rng, 20, 5, 15)
        jsd = ngram_jsd(a, b, n)
        assert jsd == ngram_jsd(b, a, n)
        assert jsd == pytest.approx(brute_jsd(a, b, n), abs=1e-12)
        assert 0.0 < jsd < 1.0


def test_2d_array_equals_list_of_rows_and_default_ns():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 6, (8, 10)), rng.integers(0, 6, (5, 12))
    out = ngram_jsds(a, b)
    assert set(out) == {"jsd_1", "jsd_2", "jsd_4"}
    assert out == ngram_jsds(list(a), list(b))
    assert out["jsd_2"] == pytest.approx(brute_jsd(a, b, 2), abs=1e-12)


def test_wide_ids_use_the_raw_bytes_keys_and_agree():
    # Relabelling ids injectively leaves the JSD unchanged. Ids spread over [-2**62, 2**62)
    # do not fit a packed int64 key for n >= 2, so this exercises the void encoding.
    rng = np.random.default_rng(2)
    a, b = random_seqs(rng, 15, 6, 10), random_seqs(rng, 15, 6, 10)
    labels = rng.choice(2**62, 6, replace=False) * np.array([1, -1, 1, -1, 1, -1])
    assert overlap._keys(overlap._grams([labels], 2)).dtype.kind == "V"
    for n in (1, 2, 4):
        assert ngram_jsd([labels[s] for s in a], [labels[s] for s in b], n) == pytest.approx(
            ngram_jsd(a, b, n), abs=1e-12)


def test_bad_ngram_arguments():
    with pytest.raises(ValueError, match="n must be"):
        ngram_jsd([np.array([1])], [np.array([1])], 0)
    with pytest.raises(ValueError, match="integers"):
        ngram_jsd([np.array([1.0, 2.0])], [np.array([1, 2])], 1)


# --- SpanIndex --------------------------------------------------------------------------------
def brute_counts(docs: list[bytes], texts: list[bytes], span: int):
    """(hits, windows) per text with a set of byte strings."""
    seen = {d[i:i + span] for d in docs for i in range(len(d) - span + 1)}
    hits = [sum(t[i:i + span] in seen for i in range(len(t) - span + 1)) for t in texts]
    return np.array(hits), np.array([max(len(t) - span + 1, 0) for t in texts])


TRAIN = ("def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
         "        self.x, self.y = x, y\n")


def test_verbatim_copy_has_share_one():
    index = SpanIndex(TRAIN.encode(), span=16)
    assert index.copied_share([TRAIN[5:60], TRAIN]) == 1.0
    assert index.copied_share([TRAIN[10:26]]) == 1.0  # exactly one window


def test_random_bytes_have_share_zero():
    index = SpanIndex(TRAIN.encode(), span=8)
    rng = random.Random(0)
    novel = ["".join(rng.choice("QZXJKVW0123456789") for _ in range(200)) for _ in range(5)]
    assert index.copied_share(novel) == 0.0


def test_half_copied_text_gives_the_hand_counted_fraction():
    span = 8
    data = "abcdefghijklmnopqrstuvwxyz" * 3
    copied, novel = data[7:47], "0123456789" * 4  # 40 bytes each; digits never occur in data
    index = SpanIndex(data.encode(), span)
    # 80 bytes -> 73 windows; the 40 - 8 + 1 = 33 inside the copied half hit, every window
    # holding a digit misses.
    assert index.copied_share([copied + novel]) == 33 / 73
    assert index.copied_share([novel + copied]) == 33 / 73
    # Pooled over texts: (33 + 33 + 0) / (73 + 33 + 33).
    assert index.copied_share([copied + novel, copied, novel]) == 66 / 139
    np.testing.assert_array_equal(index.copied_per_text([copied + novel, copied, novel, "abc"]),
                                  [33 / 73, 1.0, 0.0, np.nan])


def test_windows_do_not_cross_documents():
    span = 6
    docs = ["aaaaaXYZ", "PQRbbbbb"]
    index = SpanIndex.from_texts(docs, span)
    assert index.copied_share(["XYZPQR"]) == 0.0  # end of doc A + start of doc B
    assert SpanIndex("".join(docs).encode(), span).copied_share(["XYZPQR"]) == 1.0
    assert index.copied_share(docs) == 1.0
    assert len(index) == len({d[i:i + span] for d in docs for i in range(len(d) - span + 1)})
    # Nor in the queried texts: the window joining two texts is not counted.
    np.testing.assert_array_equal(index.copied_per_text(["aaaaa", "XYZ"]), [np.nan, np.nan])
    assert index.copied_share(["aaaaa", "XYZ"]) is None
    assert index.copied_share([]) is None


@pytest.mark.parametrize("chunk", [None, 7])
def test_agrees_with_brute_force_set(monkeypatch, chunk):
    if chunk:  # many chunks: windows and document boundaries straddle chunk edges
        monkeypatch.setattr(overlap, "_CHUNK", chunk)
    rng = random.Random(3)
    for span in (1, 3, 6):
        docs = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 60))) for _ in range(6)]
        texts = ["".join(rng.choice("abcd") for _ in range(rng.randint(0, 30))) for _ in range(20)]
        texts += [docs[0][3:40], docs[1] + docs[2]]
        hits, windows = brute_counts([d.encode() for d in docs], [t.encode() for t in texts], span)
        index = SpanIndex.from_texts(docs, span)
        assert 0 < hits.sum() < windows.sum()
        per_text = index.copied_per_text(texts)
        np.testing.assert_array_equal(np.isnan(per_text), windows == 0)
        np.testing.assert_allclose(per_text[windows > 0], (hits / np.maximum(windows, 1))[windows > 0],
                                   rtol=0, atol=1e-15)
        assert index.copied_share(texts) == hits.sum() / windows.sum()
        joined = SpanIndex("".join(docs).encode(), span)
        assert joined.copied_share(texts) == pytest.approx(
            brute_counts(["".join(docs).encode()], [t.encode() for t in texts], span)[0].sum()
            / windows.sum(), abs=0)


def test_non_ascii_utf8():
    data = "naïve café — 東京の天気は晴れです 🙂 über straße " * 2
    index = SpanIndex.from_texts([data], span=12)
    assert index.copied_share([data[3:30], "東京の天気は晴れ"]) == 1.0
    # Windows count bytes, not characters: "é" * 10 is 20 bytes -> 9 windows, none copied.
    np.testing.assert_array_equal(index.copied_per_text(["é" * 10]), [0.0])
    hits, windows = brute_counts([data.encode()], ["東京の天気は雨です".encode()], 12)
    assert index.copied_share(["東京の天気は雨です"]) == hits[0] / windows[0]
    assert 0 < hits[0] < windows[0]


def test_empty_and_short_training_data():
    assert len(SpanIndex(b"abc", span=4)) == 0
    assert SpanIndex(b"", span=4).copied_share(["abcdef"]) == 0.0
    assert len(SpanIndex.from_texts([], span=4)) == 0


def test_bad_span():
    for span in (0, -3):
        with pytest.raises(ValueError, match="span must be a positive"):
            SpanIndex(b"abcdef", span)
        with pytest.raises(ValueError, match="span must be a positive"):
            SpanIndex.from_texts(["abcdef"], span)
    with pytest.raises(TypeError, match="from_texts"):
        SpanIndex("abcdef", 2)
