"""Timing one generation point, against a bare forward pass of the same shape.

- **One compiled function per point** (sampler settings x batch x length x prompt
  length): ``sandbox.samplers.compile_sampler`` lowered and compiled ahead of time; the
  compile time is reported apart. Then ``--warmup`` untimed calls, then timed calls, each
  ended by ``jax.block_until_ready``: at most ``--repeats``, and no more once their total
  passes ``--max-seconds`` (at least one). The row keeps the median and every sample.
- **The bare-forward reference** (:class:`Forwards`) is the backbone alone, jitted, on the
  shape a sampler step reads: ``[B, L]`` bidirectional for masked diffusion, ``[B, L + 1]``
  causal for AR (its static buffer: BOS + L tokens). It is timed *between* the sampler's
  timed calls (``--fwd-repeats`` after each), so both see the same machine load; the ratio
  ``step_over_forward = (latency / NFE) / forward`` is the sampler's overhead per model
  call (1.0 = free sampling), also against a forward inside a compiled loop
  (``step_over_forward_loop``: the same setting as the sampler's steps, so the ratio is
  the sampler's own work). For AR with the cache both are far below 1 by design: a cached
  step reads one token, not the whole buffer.
- :func:`predict_nfe` bounds a call's model calls before it runs, so ``--max-call-s`` can
  skip a point that would take too long.
"""

from __future__ import annotations

import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sandbox.bench.gen_plan import Point, Subject, describe_settings
from sandbox.bench.peak import looped
from sandbox.bench.results import loadavg
from sandbox.core.flops import call_work, forward_work
from sandbox.core.mesh import device_info
from sandbox.samplers import compile_sampler

FWD_LOOP = 4              # forwards per call of the in-loop bare-forward reference, at least
LOOP_TARGET_S = 0.02      # ... and as many more (up to LOOP_MAX) as make a call last this long
LOOP_MAX = 64


class Forwards:
    """Bare forwards of the backbone, compiled once per (family, batch, sequence length).

    Two references per shape: ``single`` is one jitted call (what a user's forward costs,
    Python dispatch included); ``loop`` runs ``n`` forwards inside one compiled loop (each
    iteration's input depends on the sum of the previous logits, so none is hoisted or cut
    short) and is divided by ``n``: the cost of a forward in the same setting as a sampler's
    steps, which also run inside a compiled loop. ``n`` is at least ``FWD_LOOP`` and large
    enough for the call to last ``LOOP_TARGET_S`` (at most ``LOOP_MAX``), so that the launch's
    share of a short forward stays small: with four, a quarter of the ~0.5-1 ms launch landed
    on every one-token forward (~0.6 ms), which the roofline calibration then read as a fixed
    cost of every forward (measured 2026-12-06).
    ``step_over_forward`` divides by the first, ``step_over_forward_loop`` by the second. They
    differ by a fixed cost per executable launch (~1 ms for the tiny model on XLA:CPU,
    measured: a loop of one forward costs what the single call does, a loop of four costs
    ~20% less per forward at batch 1, length 128)."""

    def __init__(self, subjects: dict[str, Subject], seed: int = 0):
        self.subjects, self.seed = subjects, seed
        self.fns: dict[tuple, tuple] = {}
        self.compile_s: dict[tuple, float] = {}
        self.best: dict[tuple, float] = {}   # the last median measured, for predictions
        self.loop_n: dict[tuple, int] = {}   # forwards per loop call, per shape

    def get(self, family: str, batch: int, seq: int):
        k = (family, batch, seq)
        if k not in self.fns:
            s = self.subjects[family]
            mask, gd = s.mask_kind, s.graphdef

            def one(p, x):
                return nnx.merge(gd, p)(x, mask_kind=mask)

            rng = np.random.default_rng(self.seed)
            x = jnp.asarray(rng.integers(0, s.tokenizer.n_text, (batch, seq), dtype=np.int32))
            t0 = time.perf_counter()
            single = jax.jit(one).lower(s.params, x).compile()
            self.compile_s[k] = time.perf_counter() - t0
            n0 = jnp.int32(FWD_LOOP)
            loop = looped(lambda x, p: one(p, x)).lower(n0, x, s.params).compile()
            jax.block_until_ready((single(s.params, x), loop(n0, x, s.params)))  # warm-up
            self.fns[k] = (single, loop, x, s.params)
        return self.fns[k]

    def time(self, family: str, batch: int, seq: int, n: int) -> tuple[list[float], list[float]]:
        """``n`` single calls and one loop call: (single seconds, loop seconds per forward). The
        loop's length (:attr:`loop_n`) is set from the single calls (class doc)."""
        single, loop, x, params = self.get(family, batch, seq)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(single(params, x))
            out.append(time.perf_counter() - t0)
        k = (family, batch, seq)
        if k not in self.loop_n:
            want = math.ceil(LOOP_TARGET_S / statistics.median(out))
            self.loop_n[k] = int(min(LOOP_MAX, max(FWD_LOOP, want)))
        reps = self.loop_n[k]
        t0 = time.perf_counter()
        jax.block_until_ready(loop(jnp.int32(reps), x, params))
        per = (time.perf_counter() - t0) / reps
        self.best[(family, batch, seq)] = statistics.median(out)
        return out, [per]

    def one_token(self, family: str, batch: int, n: int) -> tuple[list[float], list[float]]:
        """:meth:`time` of the one-token forward ``[batch, 1]``, measured once per (family, batch)
        and reused by every later point (it is a calibration input, not a per-point figure)."""
        k = (family, batch, "one")
        if k not in self.fns:
            self.fns[k] = self.time(family, batch, 1, n)
        return self.fns[k]

    def estimate(self, family: str, batch: int, seq: int) -> float:
        k = (family, batch, seq)
        if k not in self.best:
            self.time(family, batch, seq, 2)
        return self.best[k]


def predict_nfe(p: Point, measured: list[dict]) -> int:
    """Full forwards to predict a call's cost with before running it (an upper bound where
    known). bd3lm calls read one block each (plus the cache), so a whole generation costs
    about (steps per block + 1 commit) full forwards; doubled for the cache reads. A block
    cache measured at a smaller batch costs the token positions it computed there, in full
    forwards (its NFE counts partial ones)."""
    s = p.sampler
    if p.kind == "bd3lm":
        steps = s.inner.steps if getattr(s.inner, "uses_steps", False) else s.block_size
        return 2 * (int(steps) + 1)
    # the same sampler measured at a smaller batch (small batches run first)
    same = [r for r in measured if r["sampler"] == s.name and r["settings"] == s.settings()
            and r["batch"] < p.batch and (r["length"], r["prompt_len"]) == (p.length, p.prompt_len)]
    recomputed = [r.get("recomputed_tokens") for r in same]
    if same and None not in recomputed and getattr(s, "cache", "none") != "none":
        # a block cache's calls are partial forwards: count the token positions they computed
        return max(1, -(-int(max(recomputed)) // p.length))
    if p.kind == "mdm_threshold":
        return int(max(r["nfe"] for r in same)) if same else p.generated
    if getattr(s, "uses_steps", False):
        return int(s.steps)
    return p.generated


def time_point(p: Point, subj: Subject, fwd: Forwards, o, idx: int) -> tuple[dict, object, list]:
    """Compile, warm up and time one point. Returns (row, compiled fn, outputs [calls])."""
    load0 = loadavg()
    rng = np.random.default_rng(o.seed + idx)
    prompt = jnp.asarray(rng.integers(0, subj.tokenizer.n_text, (p.batch, p.prompt_len), dtype=np.int32))
    base = jax.random.PRNGKey(o.seed + idx)
    fn = compile_sampler(p.sampler, subj.graphdef, p.length, cost=True)
    t0 = time.perf_counter()
    compiled = fn.lower(subj.params, base, prompt).compile()
    compile_s = time.perf_counter() - t0
    seq = subj.forward_len(p.length)
    fwd.get(p.family, p.batch, seq)
    outs, lat, nfes, recs, fwd_times, loop_times = [], [], [], [], [], []
    for i in range(o.warmup):
        outs.append(jax.block_until_ready(compiled(subj.params, jax.random.fold_in(base, i), prompt)))
    i = o.warmup
    while True:
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(subj.params, jax.random.fold_in(base, i), prompt))
        lat.append(time.perf_counter() - t0)
        outs.append(out)
        nfes.append(int(out[1]))
        recs += [int(out[2])] if len(out) > 2 else []
        single, looped = fwd.time(p.family, p.batch, seq, o.fwd_repeats)
        fwd_times += single
        loop_times += looped
        i += 1
        if len(lat) >= o.repeats or sum(lat) >= o.max_seconds:
            break
    # a one-token bare forward of the same batch: with the full one, the range of work the
    # roofline model's CPU calibration spans (analysis.roofline.calibrate), from a decoding
    # step's to a whole canvas's
    one_single, one_loop = fwd.one_token(p.family, p.batch, max(1, o.fwd_repeats))
    latency = statistics.median(lat)
    nfe = float(np.mean(nfes))
    forward_s = statistics.median(fwd_times)
    forward_loop_s = statistics.median(loop_times)
    per_nfe = statistics.median(t / max(n, 1) for t, n in zip(lat, nfes))
    gen = p.generated
    dev = device_info()
    computed = float(np.mean(recs)) if recs else None
    row = {"kind": "gen", "point": idx, "sweeps": list(p.sweeps), "family": p.family,
           "objective": subj.objective, "model": subj.model_name, "model_source": subj.source,
           "model_step": subj.step, "sampler": p.sampler.name, "label": p.kind,
           "settings": p.sampler.settings(), "settings_text": describe_settings(p.kind, p.sampler),
           "batch": p.batch, "length": p.length, "prompt_len": p.prompt_len, "generated": gen,
           "nfe": nfe, "nfe_samples": nfes,
           "recomputed_tokens": float(np.mean(recs)) if recs else None,
           "latency_s": latency, "latency_s_min": min(lat),
           "latency_s_samples": [round(t, 6) for t in lat],
           "latency_per_seq_s": latency / p.batch, "latency_per_token_s": latency / gen,
           "tokens_per_s": p.batch * gen / latency, "tokens_per_forward": gen / nfe if nfe else None,
           "time_per_nfe_s": per_nfe, "forward_s": forward_s, "forward_shape": [p.batch, seq],
           "forward_mask": subj.mask_kind, "forward_samples": [round(t, 6) for t in fwd_times],
           "step_over_forward": per_nfe / forward_s, "forward_loop_s": forward_loop_s,
           "forward_loop_samples": [round(t, 6) for t in loop_times],
           "forward_loop_n": fwd.loop_n.get((p.family, p.batch, seq)),
           "forward1_loop_n": fwd.loop_n.get((p.family, p.batch, 1)),
           "step_over_forward_loop": per_nfe / forward_loop_s, "compile_s": compile_s,
           "forward_compile_s": fwd.compile_s.get((p.family, p.batch, seq)), "warmup_calls": o.warmup,
           "timed_calls": len(lat), "quality": None, "load_before": load0, "load_after": loadavg(),
           "backend": dev["backend"], "device": dev["device"],
           "dtype": str(jnp.dtype(subj.model.dtype)),
           "work": call_work(p.sampler, subj.model, p.batch, p.length, p.prompt_len, nfe, computed),
           "forward_work": {k: v for k, v in forward_work(subj.model, p.batch, seq, seq).items()
                            if k in ("flops", "bytes")},
           "forward1_s": statistics.median(one_single), "forward1_loop_s": statistics.median(one_loop),
           "forward1_work": {k: v for k, v in forward_work(subj.model, p.batch, 1, 1).items()
                             if k in ("flops", "bytes")}}
    return row, (compiled, prompt, base, i), outs

