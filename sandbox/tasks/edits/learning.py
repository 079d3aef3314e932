"""Exact match during training: ``val_edit_em`` in the eval records of ``metrics.jsonl``.

Held-out bits per target byte can fall for a long time before a single edit comes out right;
this is the curve that shows when the model starts to edit. At every evaluation the trainer
calls the batch source's ``make_eval_extra`` hook (``docs/extending.md``), which for
``data=stdlib_edits`` is an :class:`ExactMatchEval` when ``data.em_items`` > 0.

* **Items**: ``data.em_items`` frozen ``val`` items of the trained kinds and tiers that fit
  the run's prompt and canvas, evenly spaced over them (the set lists each kind's items
  together, so the kinds stay balanced), the same items at every evaluation.
* **Decoding is eval=edits's** (``sandbox.tasks.edits.evaluate``): the objective's
  ``edit_sampler`` made greedy and stopping at EOS (``build_sampler``), the same compiled
  function (``compile_fn``), the full masked canvas for diffusion; the output is scored by
  ``metrics.score`` in the run's ``data.format`` (a ``udiff`` / ``search_replace`` output is
  applied to the function first). ``eval=edits`` decodes one item per call, this a batch;
  greedy rows do not depend on each other, so the outputs agree up to float summation order.
* **Batched and compiled once**: the items are decoded in chunks of at most :data:`CHUNK`
  rows of one shape (the last chunk padded by repeating a row), compiled ahead of time at
  the first evaluation (without XLA's constant folding: :data:`COMPILER_OPTIONS`) and reused
  by every later one. The EMA weights are read as they are placed on the trainer's device
  layout; the output is replicated, so every process computes the same record (process 0
  writes it).
* **Cost** (tiny model, 32 items, 2-core CPU, untrained weights): AR 0.6 s per evaluation
  (2.5 s compile once); MDLM's threshold sampler 18 s (96 forwards of the 32 x 256 batch; it
  reveals fewer positions per forward the less sure the model is).

Record fields: ``val_edit_em`` (exact match over the items), ``val_edit_items`` (how many),
``val_edit_em_<kind>`` per edit kind, ``val_edit_s`` (seconds of decoding and scoring,
compilation excluded), ``val_edit_nfe`` (model calls per decoding call: AR stops when every
row of the chunk has ended, a diffusion sampler when every position is revealed) and, at the
first evaluation of a process, ``val_edit_compile_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import numpy as np

from sandbox.tasks.edits.evaluate import build_sampler, canvas, compile_fn
from sandbox.tasks.edits.metrics import aggregate, score

CHUNK = 64  # items per decoding call at most
# XLA's constant folding evaluates, at compile time, the attention of the AR prefill over the
# still-empty KV cache ([B, heads, prompt, cache] constants): 20 s of a 23 s compile at 32 rows
# of the tiny model on the CPU, 2.5 s without it, and the same decoding time (0.6 s).
COMPILER_OPTIONS = {"xla_disable_hlo_passes": "constant_folding"}


def em_items(src, n: int) -> list:
    """``n`` evenly spaced frozen val items of ``src``'s (an ``EditBatches``) kinds and tiers
    that fit its prompt and canvas (fewer when fewer fit)."""
    pool = [it for it in src.data.items("val", src.kinds, src.tiers) if src.encode(it).fits]
    n = min(int(n), len(pool))
    return [pool[i * len(pool) // n] for i in range(n)]


@dataclass
class InTraining:
    """The parts of a ``LoadedRun`` that ``evaluate.build_sampler`` and ``evaluate.compile_fn``
    read, for a model that is still being trained."""

    objective: object
    tokenizer: object
    data: object          # the EditBatches source
    graphdef: object


class ExactMatchEval:
    """``(params, step=) -> record fields`` (module doc) for the batch source ``src``."""

    def __init__(self, src, graphdef, objective, layout, n_items: int, seed: int = 0):
        self.src, self.layout = src, layout
        self.items = em_items(src, n_items)
        view = InTraining(objective, src.tokenizer, src, graphdef)
        self.sampler = build_sampler({}, view)  # the objective's edit_sampler, greedy, stop at EOS
        fn = compile_fn(view, self.sampler, src.prompt_len, src.seq_len)
        self.fn = jax.jit(fn, out_shardings=layout.replicated)
        rows = np.stack([self._input(it) for it in self.items])
        n_chunks = -(-len(rows) // CHUNK)
        size = -(-len(rows) // n_chunks)
        pad = n_chunks * size - len(rows)
        rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)]) if pad else rows
        self.chunks = [rows[i * size:(i + 1) * size] for i in range(n_chunks)]
        self.key = jax.random.PRNGKey(seed)  # greedy decoding: the key only breaks exact ties
        self.compiled = None

    def _input(self, item) -> np.ndarray:
        """The sampler's input row: the prompt (AR) or prompt + masked canvas (diffusion)."""
        prompt = self.src.prompt(item)
        if self.sampler.family != "mdm":
            return prompt
        return np.concatenate([prompt, canvas(self.src, item, "canvas", self.sampler.mask_id)])

    def decode(self, params) -> tuple[list[str], float, float]:
        """(target text of every item, model calls per decoding call, compile seconds spent by
        this call)."""
        compile_s, outs, nfes = 0.0, [], []
        for i, rows in enumerate(self.chunks):
            x = self.layout.full_batch(rows)
            key = self.layout.replicate(jax.random.fold_in(self.key, i))
            if self.compiled is None:
                t0 = time.perf_counter()
                self.compiled = self.fn.lower(params, key, x).compile(COMPILER_OPTIONS)
                compile_s = time.perf_counter() - t0
            tokens, nfe, *_ = self.compiled(params, key, x)  # diffusion also returns positions computed
            outs.append(np.asarray(tokens)[:, self.src.prompt_len:])
            nfes.append(int(nfe))
        canvases = np.concatenate(outs)[:len(self.items)]
        return [self.src.decode_target(c) for c in canvases], float(np.mean(nfes)), compile_s

    def __call__(self, params, *, step: int | None = None) -> dict:
        t0 = time.perf_counter()
        outputs, nfe, compile_s = self.decode(params)
        return em_record(self.items, outputs, self.src.score_format, time.perf_counter() - t0 - compile_s,
                         compile_s, val_edit_nfe=nfe)


def em_record(items, outputs, fmt: str, seconds: float, compile_s: float = 0.0, **extra) -> dict:
    """The eval record's exact-match fields (module doc) of ``outputs`` scored in ``fmt``."""
    agg = aggregate(items, [score(it.before, it.after, out, fmt)
                            for it, out in zip(items, outputs, strict=True)])
    rec = {"val_edit_em": agg["all"]["exact"], "val_edit_items": len(items),
           **{f"val_edit_em_{k}": m["exact"] for k, m in agg["by_kind"].items()},
           "val_edit_s": seconds, **extra}
    if compile_s:
        rec["val_edit_compile_s"] = compile_s
    return rec
