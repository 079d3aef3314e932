"""A fixed probabilistic context-free grammar whose true entropy rate is known exactly.

The ``synthetic`` corpus samples English-like sentences from :data:`GRAMMAR` ("the old
cat which sees a dog sleeps. bob thinks that alice runs quietly\\n"), so a model's bits
per byte can be compared with the best achievable figure, :func:`bits_per_byte`,
without any judge model.

Design choices:

* **Unambiguous by construction.** The grammar is LL(1): for every nonterminal the
  alternatives start with disjoint sets of words (or, for an empty alternative, with
  words that cannot follow it). An LL(1) grammar has at most one leftmost derivation
  per string, so the probability of a sentence equals the probability of its
  derivation and the sentence entropy equals the derivation entropy.
  :func:`ll1_table` checks the condition (it raises on any conflict) and
  :func:`parse` recovers the derivation of a rendered sentence; the tests run both.
  Every word also belongs to exactly one preterminal, and no word contains a space,
  ``.`` or newline, so a byte stream of sentences splits back into sentences and words
  in exactly one way.
* **Exact entropy from linear equations.** With ``M[A, B]`` the expected number of
  ``B`` in one expansion of ``A``, the derivation entropy ``H`` and the expected byte
  length ``C`` of each nonterminal solve ``H = h + M H`` and ``C = c + M C`` (``h``: the
  entropy of ``A``'s rule choice, ``c``: the expected bytes of the terminals ``A``
  emits directly). The grammar is subcritical (spectral radius of ``M`` < 1), so
  ``(I - M)`` is invertible and sentences are finite almost surely. Since sentences
  are i.i.d. and self-delimiting, the entropy rate of the byte stream is
  ``H(S) / C(S)`` bits per byte.
* **Byte accounting.** A sentence renders as its words joined by single spaces, then
  its end mark (``". "`` or ``"\\n"``, itself a choice of the grammar), so each word
  costs ``len(word) + 1`` bytes and an end mark ``len(mark) - 1`` bytes.
* **Reproducible sampling.** The sampler consumes only the raw 64-bit stream of the
  generator's bit generator (``random_raw``), whose output NumPy guarantees to be
  stable across versions, never a ``Generator`` method whose stream may change.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from functools import cache

import numpy as np

START = "S"
END_MARKS = (". ", "\n")

# weights are normalized per nonterminal; uppercase = nonterminal, anything else = terminal
_WEIGHTED: dict[str, list[tuple[float, tuple[str, ...]]]] = {
    "S": [(1.0, ("NP", "VP", "END"))],
    "NP": [(3.0, ("DET", "NBAR")), (1.0, ("NAME",))],
    "NBAR": [(0.3, ("ADJ", "NBAR")), (0.7, ("NOUN", "NPOST"))],
    "NPOST": [(0.2, ("PP",)), (0.12, ("RC",)), (0.68, ())],
    "PP": [(1.0, ("PREP", "NP"))],
    "RC": [(1.0, ("which", "VP"))],
    "VP": [(0.45, ("VI", "VMOD")), (0.4, ("VT", "NP")), (0.15, ("VS", "that", "NP", "VP"))],
    "VMOD": [(0.25, ("ADV",)), (0.2, ("PP",)), (0.55, ())],
    "END": [(0.85, (". ",)), (0.15, ("\n",))],
}
_LEXICON: dict[str, list[tuple[str, float]]] = {
    "DET": [("the", 9), ("a", 6), ("this", 2), ("every", 2), ("no", 1)],
    "NAME": [("alice", 4), ("bob", 3), ("carol", 2), ("dave", 1)],
    "ADJ": [("small", 5), ("old", 4), ("red", 3), ("quiet", 2), ("happy", 2), ("green", 1)],
    "NOUN": [("cat", 8), ("dog", 7), ("house", 5), ("child", 5), ("tree", 4), ("river", 3),
             ("garden", 3), ("bird", 2), ("teacher", 2), ("song", 1)],
    "PREP": [("in", 5), ("near", 3), ("with", 3), ("under", 2), ("behind", 1)],
    "VI": [("sleeps", 5), ("runs", 4), ("sings", 3), ("waits", 2), ("laughs", 1)],
    "VT": [("sees", 5), ("likes", 4), ("finds", 3), ("follows", 2), ("remembers", 1)],
    "VS": [("thinks", 3), ("says", 3), ("knows", 2), ("hopes", 1)],
    "ADV": [("quietly", 3), ("often", 3), ("today", 2), ("again", 1)],
}


def _normalize() -> dict[str, tuple[tuple[float, tuple[str, ...]], ...]]:
    rules = dict(_WEIGHTED)
    for pre, words in _LEXICON.items():
        rules[pre] = [(w, (word,)) for word, w in words]
    out = {}
    for a, alts in rules.items():
        total = sum(w for w, _ in alts)
        out[a] = tuple((w / total, rhs) for w, rhs in alts)
    return out


#: nonterminal -> ((probability, right-hand side), ...); rule order is part of the grammar
GRAMMAR = _normalize()
NONTERMINALS = tuple(GRAMMAR)  # index order for the linear systems; START first
#: version of the grammar + sampler; bump on any change that alters the sampled text
VERSION = "pcfg-v1-" + hashlib.sha256(
    json.dumps({a: [[p, list(r)] for p, r in alts] for a, alts in GRAMMAR.items()}).encode()
).hexdigest()[:12]


def is_nonterminal(sym: str) -> bool:
    return sym in GRAMMAR


def terminal_bytes(sym: str) -> int:
    """Bytes a terminal adds to the rendered sentence (see the module docstring)."""
    n = len(sym.encode("utf-8"))
    return n - 1 if sym in END_MARKS else n + 1


def render(terminals: list[str]) -> str:
    """Words joined by spaces, then the end mark (always the last terminal)."""
    return " ".join(terminals[:-1]) + terminals[-1]


# ----------------------------------------------------------------------------- analysis


def _linear_systems() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M, h, c)``: expected child counts, rule-choice entropy (bits), direct bytes."""
    idx = {a: i for i, a in enumerate(NONTERMINALS)}
    n = len(NONTERMINALS)
    m, h, c = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    for a, alts in GRAMMAR.items():
        i = idx[a]
        for p, rhs in alts:
            h[i] -= p * math.log2(p)
            for sym in rhs:
                if is_nonterminal(sym):
                    m[i, idx[sym]] += p
                else:
                    c[i] += p * terminal_bytes(sym)
    return m, h, c


@cache
def analytic() -> dict[str, float]:
    """Exact per-sentence entropy (bits), expected bytes and bits per byte of the grammar."""
    m, h, c = _linear_systems()
    rho = max(abs(np.linalg.eigvals(m)))
    if rho >= 1:  # pragma: no cover - guards edits to the grammar
        raise ValueError(f"grammar is not subcritical (spectral radius {rho:.3f})")
    a = np.eye(len(h)) - m
    big_h, big_c = np.linalg.solve(a, h), np.linalg.solve(a, c)
    s = NONTERMINALS.index(START)
    return {
        "bits_per_sentence": float(big_h[s]),
        "bytes_per_sentence": float(big_c[s]),
        "bits_per_byte": float(big_h[s] / big_c[s]),
        "spectral_radius": float(rho),
    }


def bits_per_byte() -> float:
    """Entropy rate of the sentence byte stream, in bits per UTF-8 byte of text."""
    return analytic()["bits_per_byte"]


def derivation_log2prob(derivation: list[tuple[str, int]]) -> float:
    """log2 p of a derivation given as ``[(nonterminal, rule index), ...]``."""
    return sum(math.log2(GRAMMAR[a][i][0]) for a, i in derivation)


# ----------------------------------------------------------------------------- sampling


class _Uniforms:
    """Uniform doubles in [0, 1) from the bit generator's raw stream, drawn in chunks."""

    def __init__(self, rng: np.random.Generator, chunk: int = 1 << 16):
        self.bitgen, self.chunk, self.buf, self.pos = rng.bit_generator, chunk, [], 0

    def __call__(self) -> float:
        if self.pos == len(self.buf):
            raw = self.bitgen.random_raw(self.chunk)
            self.buf, self.pos = ((raw >> np.uint64(11)) * (1.0 / 2**53)).tolist(), 0
        self.pos += 1
        return self.buf[self.pos - 1]


# per nonterminal: (cumulative bounds, right-hand sides); one-rule nonterminals draw nothing
_TABLE = {
    a: ([float(x) for x in np.cumsum([p for p, _ in alts])[:-1]], [rhs for _, rhs in alts])
    for a, alts in GRAMMAR.items()
}


def _sample_one(uniform: _Uniforms, derivation: list | None) -> list[str]:
    out: list[str] = []
    stack = [START]
    table = _TABLE
    while stack:
        sym = stack.pop()
        entry = table.get(sym)
        if entry is None:
            out.append(sym)
            continue
        bounds, rhss = entry
        i = bisect.bisect_right(bounds, uniform()) if bounds else 0
        if derivation is not None:
            derivation.append((sym, i))
        stack.extend(reversed(rhss[i]))
    return out


def sample_sentences(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` i.i.d. rendered sentences, each ending in ``". "`` or ``"\\n"``."""
    uniform = _Uniforms(rng)
    return [render(_sample_one(uniform, None)) for _ in range(n)]


def sample_derivations(rng: np.random.Generator, n: int) -> list[tuple[str, list[tuple[str, int]]]]:
    """``n`` samples as ``(sentence, leftmost derivation [(nonterminal, rule index), ...])``."""
    uniform = _Uniforms(rng)
    out = []
    for _ in range(n):
        der: list[tuple[str, int]] = []
        out.append((render(_sample_one(uniform, der)), der))
    return out


# ----------------------------------------------------------------------------- LL(1) check


def _first_follow() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, bool]]:
    nullable = {a: False for a in GRAMMAR}
    first: dict[str, set[str]] = {a: set() for a in GRAMMAR}
    follow: dict[str, set[str]] = {a: set() for a in GRAMMAR}

    def first_of(seq: tuple[str, ...]) -> tuple[set[str], bool]:
        out: set[str] = set()
        for sym in seq:
            if not is_nonterminal(sym):
                return out | {sym}, False
            out |= first[sym]
            if not nullable[sym]:
                return out, False
        return out, True

    changed = True
    while changed:
        changed = False
        for a, alts in GRAMMAR.items():
            for _, rhs in alts:
                f, null = first_of(rhs)
                if not f <= first[a] or (null and not nullable[a]):
                    first[a] |= f
                    nullable[a] = nullable[a] or null
                    changed = True
                for k, sym in enumerate(rhs):
                    if not is_nonterminal(sym):
                        continue
                    f, null = first_of(rhs[k + 1:])
                    new = f | (follow[a] if null else set())
                    if not new <= follow[sym]:
                        follow[sym] |= new
                        changed = True
    return first, follow, nullable


@cache
def ll1_table() -> dict[tuple[str, str], int]:
    """``(nonterminal, next terminal) -> rule index``; raises ValueError on an LL(1) conflict.

    Building the table without a conflict proves the grammar unambiguous.
    """
    first, follow, nullable = _first_follow()
    table: dict[tuple[str, str], int] = {}
    for a, alts in GRAMMAR.items():
        for i, (_, rhs) in enumerate(alts):
            look: set[str] = set()
            null = True
            for sym in rhs:
                if not is_nonterminal(sym):
                    look.add(sym)
                    null = False
                    break
                look |= first[sym]
                if not nullable[sym]:
                    null = False
                    break
            if null:
                look |= follow[a]
            for t in look:
                if (a, t) in table:
                    raise ValueError(f"LL(1) conflict at {a} on {t!r}")
                table[(a, t)] = i
    return table


def parse(sentence: str) -> list[tuple[str, int]]:
    """The (unique) leftmost derivation of a rendered sentence; ValueError if none."""
    mark = next((m for m in END_MARKS if sentence.endswith(m)), None)
    if mark is None:
        raise ValueError(f"sentence does not end with an end mark: {sentence!r}")
    tokens = sentence[: -len(mark)].split(" ") + [mark]
    table = ll1_table()
    stack, pos, derivation = [START], 0, []
    while stack:
        sym = stack.pop()
        look = tokens[pos] if pos < len(tokens) else None
        if not is_nonterminal(sym):
            if sym != look:
                raise ValueError(f"expected {sym!r} at word {pos}, got {look!r}")
            pos += 1
            continue
        i = table.get((sym, look))
        if i is None:
            raise ValueError(f"no rule for {sym} before {look!r}")
        derivation.append((sym, i))
        stack.extend(reversed(GRAMMAR[sym][i][1]))
    if pos != len(tokens):
        raise ValueError(f"trailing words after position {pos}")
    return derivation
