"""Sample-quality statistics: pure functions over token arrays and texts, plus a judge.

API (``sandbox.evaluate`` and the generation benchmark import these):

- ``sample_quality(texts: list[str], tokens: list[np.ndarray] | np.ndarray, *,
  judge: Judge | None = None, code: bool = False) -> dict`` with keys
  ``n_samples``, ``gen_ppl`` and ``gen_ppl_stderr`` (None without a judge), ``unigram_entropy``,
  ``unigram_entropy_pooled``, ``distinct_1`` .. ``distinct_4``, ``ast_parse_rate`` and
  ``ast_parse_rate_lines`` (both None unless ``code``), and with ``eos_id=`` the EOS flood
  (``eos_ended``, ``eos_first_frac``, ``eos_share``). ``until_first_eos`` cuts samples
  whose sampler pads after EOS (``eval=quality`` then scores the text up to the first EOS
  and takes the EOS statistics from the whole output). ``texts[i]`` is the decoded
  ``tokens[i]``; token statistics read ``tokens``, the parse rates read ``texts``.
- ``load_judge(run_dir) -> Judge``: the EMA weights of a run trained with
  ``objective=ar`` (UserError otherwise), ready for ``gen_perplexity``. The default judge
  is ``python -m sandbox.train experiment=judge``: an AR model trained on the ``test``
  split, which no other model trains on.

Definitions (every figure means nothing alone: the evaluator always reports the same
statistics of real held-out text next to the samples' ones):

- ``gen_perplexity``: ``exp`` of the judge's mean NLL per token (nats) over every token of
  every sample. The judge was trained on windows of ``window`` tokens (its
  ``train.seq_len``) that start anywhere in a document, after BOS; a sample longer than
  that is scored as consecutive windows of at most ``window`` tokens, each read after BOS,
  exactly as the judge saw its training data (no extrapolation past its training length).
  Only meaningful for samples in the judge's tokenizer (the evaluator checks this).
- ``unigram_entropy``: Shannon entropy (bits) of the token frequencies *within each
  sample*, averaged over samples (as in Zheng et al. 2024, who use it to expose the
  low-diversity samples that a low gen-perplexity can hide). ``unigram_entropy_pooled``
  is the entropy of all samples' tokens pooled (mode collapse across samples).
- ``distinct_n``: distinct n-grams / total n-grams over all samples pooled (Li et al.
  2016), n-grams not crossing sample boundaries. It depends on the total number of
  tokens, so compare only sets of equal size (the evaluator does).
- ``ast_parse_rate``: fraction of texts that ``ast.parse`` accepts whole. Harsh for a
  window cut from the middle of a file, hence also
- ``ast_parse_rate_lines``: fraction of texts whose *outermost complete block* parses.
  Drop the first and the last line (the window may have cut them); among the remaining
  non-blank lines that do not start with ``#`` or a closing bracket, the *outermost
  lines* are those with the smallest indentation. The block runs from the first
  outermost line up to (not including) the last one, dedented; it is a run of whole
  statements at the outermost level of the window. A text with fewer than two outermost
  lines has no block and counts as not parsed. The rule is a heuristic (a line inside a
  multi-line string can look outermost); held-out text scored by the same rule is the
  reference.
- ``eos_ended``, ``eos_first_frac``, ``eos_share`` (with ``eos_id=``): the EOS flood of
  masked diffusion (samples that end early, or whose tail is all EOS). The share of samples
  holding an EOS, the mean position of the first one as a fraction of the length (1 where
  none), and the share of all tokens that are EOS. Held-out windows of the same length
  cross document boundaries at the corpus's own rate, so their figures are the reference.
"""

from __future__ import annotations

import ast
import math
import textwrap
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sandbox.core.errors import UserError


# --- token statistics -------------------------------------------------------------------------
def _as_list(token_arrays) -> list[np.ndarray]:
    if isinstance(token_arrays, np.ndarray) and token_arrays.ndim == 2:
        return list(token_arrays)
    return [np.asarray(t).ravel() for t in token_arrays]


def _entropy_bits(counts) -> float:
    c = np.asarray(list(counts), dtype=np.float64)
    if c.sum() == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def unigram_entropy(token_arrays, pooled: bool = False) -> float:
    """Mean over samples of the entropy (bits) of each sample's token frequencies; with
    ``pooled`` the entropy of all tokens together. token_arrays: [N, L] or N arrays."""
    seqs = [s for s in _as_list(token_arrays) if len(s)]
    if not seqs:
        return float("nan")
    if pooled:
        return _entropy_bits(np.unique(np.concatenate(seqs), return_counts=True)[1])
    return float(np.mean([_entropy_bits(np.unique(s, return_counts=True)[1]) for s in seqs]))


def distinct_n(token_arrays, n: int) -> float:
    """Distinct n-grams / total n-grams over all samples (n-grams stay inside a sample)."""
    grams: Counter = Counter()
    for s in _as_list(token_arrays):
        s = s.tolist()
        grams.update(tuple(s[i:i + n]) for i in range(len(s) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else float("nan")


# --- code statistics --------------------------------------------------------------------------
def _parses(text: str) -> bool:
    """True if ``ast.parse`` accepts the text and it holds at least one statement: a blank
    or comment-only sample (what a collapsed sampler emits) does not count as code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. are still code
            return bool(ast.parse(text).body)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def ast_parse_rate(texts) -> float:
    """Fraction of ``texts`` that ``ast.parse`` accepts as a whole."""
    texts = list(texts)
    return sum(map(_parses, texts)) / len(texts) if texts else float("nan")


def outermost_block(text: str) -> str | None:
    """The outermost complete block of a text cut from code (module doc), or None."""
    lines = text.split("\n")[1:-1]

    def indent(line):
        return len(line) - len(line.lstrip(" \t"))

    starts = [i for i, ln in enumerate(lines)
              if ln.strip() and not ln.lstrip().startswith(("#", ")", "]", "}"))]
    if not starts:
        return None
    lo = min(indent(lines[i]) for i in starts)
    outer = [i for i in starts if indent(lines[i]) == lo]
    if len(outer) < 2:
        return None
    return textwrap.dedent("\n".join(lines[outer[0]:outer[-1]])) + "\n"


def ast_parse_rate_lines(texts) -> float:
    """Fraction of ``texts`` whose outermost complete block parses (module doc)."""
    texts = list(texts)
    if not texts:
        return float("nan")
    ok = 0
    for t in texts:
        block = outermost_block(t)
        ok += block is not None and _parses(block)
    return ok / len(texts)


# --- generative perplexity under an AR judge --------------------------------------------------
def _windows(token_arrays, window: int, pad_id: int):
    """Cut every sample into consecutive windows of <= ``window`` tokens.
    Returns (tokens[M, window] int32, valid[M, window] bool, sample index of each window [M])."""
    rows, valid, owner = [], [], []
    for n, s in enumerate(_as_list(token_arrays)):
        for i in range(0, len(s), window):
            piece = np.asarray(s[i:i + window], dtype=np.int32)
            row = np.full(window, pad_id, np.int32)
            row[:len(piece)] = piece
            rows.append(row)
            valid.append(np.arange(window) < len(piece))
            owner.append(n)
    if not rows:
        return np.zeros((0, window), np.int32), np.zeros((0, window), bool), np.zeros(0, np.int64)
    return np.stack(rows), np.stack(valid), np.asarray(owner)


def make_scorer(graphdef, objective):
    """jit(params, tokens[B, W], valid[B, W]) -> (NLL nats [B], number of tokens [B]) per row.
    Causal: padding after a window's end cannot change the NLL of the tokens before it."""

    def score(params, tokens, valid):
        nll = objective.per_token(nnx.merge(graphdef, params), tokens)
        return jnp.sum(jnp.where(valid, nll, 0.0), axis=-1), jnp.sum(valid, axis=-1)

    return jax.jit(score)


def gen_perplexity(graphdef, params, objective, token_arrays, *, window: int, batch_size: int = 32,
                   vocab_size: int | None = None, scorer=None, stderr: bool = False):
    """exp(mean NLL per token) of an AR model (``objective`` bound to its tokenizer) over
    every token of ``token_arrays`` ([N, L] or N arrays), each sample scored in windows
    of <= ``window`` tokens after BOS. Batches are padded to ``batch_size`` rows, so the
    scorer compiles once. ``stderr``: (ppl, its standard error over samples), the delta
    method on the ratio estimator (sum NLL / sum tokens, samples as the units)."""
    if not is_judge(objective):
        raise UserError(f"the judge must be an exact left-to-right model (objective={objective.name} is not)")
    tokens, valid, owner = _windows(token_arrays, window, pad_id=0)
    if not valid.any():
        return (float("nan"), float("nan")) if stderr else float("nan")
    if vocab_size is not None and int(tokens[valid].max()) >= vocab_size:
        raise UserError(f"samples hold token id {int(tokens[valid].max())} outside the judge's "
                        f"vocabulary ({vocab_size}); the judge must use the samples' tokenizer")
    scorer = scorer or make_scorer(graphdef, objective)
    b = min(batch_size, len(tokens))
    pad = (-len(tokens)) % b
    tokens = np.concatenate([tokens, np.zeros((pad, window), np.int32)])
    valid = np.concatenate([valid, np.zeros((pad, window), bool)])
    nll, cnt = [], []
    for i in range(0, len(tokens), b):
        s, c = scorer(params, jnp.asarray(tokens[i:i + b]), jnp.asarray(valid[i:i + b]))
        nll.append(np.asarray(s, np.float64))
        cnt.append(np.asarray(c, np.float64))
    n_win = len(owner)
    nll, cnt = np.concatenate(nll)[:n_win], np.concatenate(cnt)[:n_win]
    per_s = np.bincount(owner, nll)            # per sample: NLL nats and tokens
    per_c = np.bincount(owner, cnt)
    keep = per_c > 0
    per_s, per_c = per_s[keep], per_c[keep]
    mean = per_s.sum() / per_c.sum()
    ppl = math.exp(mean)
    if not stderr:
        return ppl
    n = len(per_c)
    if n < 2:
        return ppl, float("nan")
    resid = per_s - mean * per_c
    se_log = math.sqrt(n / (n - 1) * float(np.sum(resid ** 2))) / per_c.sum()
    return ppl, ppl * se_log


@dataclass
class Judge:
    """What gen_perplexity needs from an AR run: weights, objective and window."""

    run_dir: Path
    graphdef: object
    params: object
    objective: object
    window: int                     # the judge's train.seq_len
    vocab_size: int
    tokenizer: dict                 # the judge's prepared-data tokenizer description
    data: dict                      # the judge's data config (to check disjointness)
    train_split: str
    step: int
    batch_size: int = 32
    _scorer: object = field(default=None, repr=False)

    def perplexity(self, token_arrays, stderr: bool = False):
        """gen-perplexity of the samples (``stderr``: with its standard error, a pair)."""
        if self._scorer is None:
            self._scorer = make_scorer(self.graphdef, self.objective)
        return gen_perplexity(self.graphdef, self.params, self.objective, token_arrays,
                              window=self.window, batch_size=self.batch_size,
                              vocab_size=self.vocab_size, scorer=self._scorer, stderr=stderr)


def is_judge(objective) -> bool:
    """A judge scores every token left to right with an exact likelihood (``per_token``)."""
    return bool(objective.exact) and objective.sampler_family == "ar" and hasattr(objective, "per_token")


def load_judge(run_dir, batch_size: int = 32) -> Judge:
    """The EMA weights of an exact left-to-right run (``objective=ar``) as a :class:`Judge`."""
    from omegaconf import OmegaConf

    from sandbox.core.cli import instantiate
    from sandbox.core.runs import load_run, read_config, upgrade_config

    _, cfg = read_config(run_dir)  # the objective decides, before any weights are read
    objective = instantiate(upgrade_config(cfg).objective, "objective")
    if not is_judge(objective):
        raise UserError(f"judge_dir={run_dir}: trained with objective={objective.name}; a judge must "
                        "be an exact left-to-right run (python -m sandbox.train experiment=judge)")
    run = load_run(run_dir, weights="ema")
    return Judge(run_dir=run.dir, graphdef=run.graphdef, params=run.params, objective=run.objective,
                 window=min(run.seq_len, int(run.model.max_len)), vocab_size=run.tokenizer.vocab_size,
                 tokenizer=dict(run.data.manifest.get("tokenizer", {})),
                 data=OmegaConf.to_container(run.cfg.data, resolve=True),
                 train_split=run.train_split, step=run.step, batch_size=batch_size)


# --- everything at once -----------------------------------------------------------------------
def _first_eos(t: np.ndarray, eos_id: int) -> int | None:
    hit = np.flatnonzero(t == eos_id)
    return int(hit[0]) if len(hit) else None


def eos_flood(seqs, eos_id: int) -> dict:
    """How samples end (module doc, ``eos_*``): the share with an EOS (``eos_ended``), the mean
    position of the first EOS as a fraction of the length (1 where none: ``eos_first_frac``),
    and the share of all tokens that are EOS (``eos_share``)."""
    first = []
    n_eos = n_tok = 0
    for t in _as_list(seqs):
        i = _first_eos(t, eos_id)
        first.append(1.0 if i is None else i / max(len(t), 1))
        n_eos, n_tok = n_eos + int(np.sum(t == eos_id)), n_tok + len(t)
    if not first:
        return {"eos_ended": None, "eos_first_frac": None, "eos_share": None}
    return {"eos_ended": float(np.mean([f < 1.0 for f in first])), "eos_first_frac": float(np.mean(first)),
            "eos_share": n_eos / max(n_tok, 1)}


def until_first_eos(token_arrays, eos_id: int) -> list[np.ndarray]:
    """Each sequence cut after its first EOS (kept: the judge scores the ending); sequences
    without one are whole. What a sampler that pads after EOS has written as text."""
    cut = [(t, _first_eos(t, eos_id)) for t in _as_list(token_arrays)]
    return [t if i is None else t[:i + 1] for t, i in cut]


def sample_quality(texts: list[str], tokens, *, judge: Judge | None = None, code: bool = False,
                   eos_id: int | None = None) -> dict:
    """Quality statistics of one set of samples (see the module doc for each key)."""
    seqs = _as_list(tokens)
    texts = list(texts)
    if len(texts) != len(seqs):
        raise ValueError(f"{len(texts)} texts but {len(seqs)} token arrays")
    ppl, se = judge.perplexity(seqs, stderr=True) if judge is not None else (None, None)
    out = {"n_samples": len(seqs), "gen_ppl": ppl, "gen_ppl_stderr": se,
           "unigram_entropy": unigram_entropy(seqs),
           "unigram_entropy_pooled": unigram_entropy(seqs, pooled=True)}
    for n in (1, 2, 3, 4):
        out[f"distinct_{n}"] = distinct_n(seqs, n)
    out["ast_parse_rate"] = ast_parse_rate(texts) if code else None
    out["ast_parse_rate_lines"] = ast_parse_rate_lines(texts) if code else None
    if eos_id is not None:
        out.update(eos_flood(seqs, eos_id))
    return out
