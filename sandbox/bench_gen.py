"""Generation-speed benchmark: latency, tokens/s, NFE, and each step against a bare forward.

``python -m sandbox.bench gen`` times every sampler over its sweep axes and prints one row
per point, then a summary of the three figures the sandbox is built to show:
(a) a diffusion sampler's time per model call against one bare forward pass of the same
shape, (b) how AR time per token grows with output length with and without the KV cache,
(c) where ``mdm_threshold`` stands against AR at batch 1 and at the largest batch.

Protocol (DESIGN.md, "Speed protocol"):
- **One compiled function per point** (sampler settings x batch x length x prompt
  length): ``sandbox.samplers.compile_sampler`` lowered and compiled ahead of time; the
  compile time is reported apart. Then ``--warmup`` untimed calls, then timed calls, each
  ended by ``jax.block_until_ready``: at most ``--repeats``, and no more once their total
  passes ``--max-seconds`` (at least one). The row keeps the median and every sample.
- **The bare-forward reference** is the backbone alone, jitted, on the shape a sampler
  step reads: ``[B, L]`` bidirectional for masked diffusion, ``[B, L + 1]`` causal for AR
  (its static buffer: BOS + L tokens). It is timed *between* the sampler's timed calls
  (``--fwd-repeats`` after each), so both see the same machine load; the ratio
  ``step_over_forward = (latency / NFE) / forward`` is the sampler's overhead per model
  call (1.0 = free sampling). It is computed against two references (``Forwards``): one
  jitted call (Python dispatch included) and a forward inside a compiled loop
  (``step_over_forward_loop``: the same setting as the sampler's steps, so the ratio is
  the sampler's own work). For AR with the cache both are far below 1 by design: a cached
  step reads one token, not the whole buffer.
- **Points**: ``ar`` (KV cache) over output lengths at batch 1 and over batches;
  ``ar_nocache`` (the full causal forward per token, the reference for figure b) over
  lengths; ``mdm_ancestral`` over lengths (steps = generated/8), steps (generated/16 ..
  generated), batches and semi-AR block sizes; ``mdm_topk_confidence`` over steps;
  ``mdm_first_hitting`` once; ``mdm_threshold`` over lengths, tau x batches and block
  sizes; ``bd3lm`` (block diffusion with its KV cache, ancestral inside each block with
  block/``--length-div`` steps, every block generated) over ``--bd3lm-blocks`` and
  batches. Identical points from two sweeps are timed once (``sweeps`` lists both).
- ``ar_nocache`` generates only the last ``--nocache-tokens`` tokens of each length after
  a random prompt: each of its steps is one forward of the whole static buffer whatever
  the position, so its time per generated token is the same as a full generation's,
  without the quadratic bill (512 forwards of 513 tokens at batch 1 is half a minute on
  a 2-core CPU). ``prompt_len`` in the row says so.
- **Random or trained weights**: ``--ar-run`` / ``--mdm-run`` / ``--bd3lm-run`` load trained runs
  (``sandbox.runs.load_run``, EMA weights); a family without one gets a randomly
  initialised ``--model`` (tiny). Speed does not depend on the weights, except the NFE of
  ``mdm_threshold`` (and ancestral's skipped calls): with random weights no token reaches
  tau, so it reveals one token per call (NFE = generated tokens).
- ``--max-call-s`` skips a point whose predicted single call (NFE bound x measured
  forward) exceeds it, with a printed and recorded reason; ``mdm_threshold``'s NFE is
  predicted from an already measured point of the same settings at a smaller batch.
- **Quality** (``--quality``): after all timing, the samples of every point that draws
  from the same distribution (same model, sampler settings and length; batch and KV cache
  do not change the distribution) are pooled, topped up to ``--quality-samples`` with
  untimed calls, and scored by ``sandbox.quality.sample_quality`` (gen-perplexity only
  with ``--judge``; otherwise unigram entropy, distinct-n and, for code, the parse
  rates). With trained runs the same statistics of held-out windows of the same length
  are recorded as ``reference`` rows. Quality rows (``kind: gen_quality``) name the
  points they belong to; ``analysis.load.load_bench_gen`` merges them into the rows.

Output: ``<out>/gen-<timestamp>/results.jsonl`` (``meta``, one ``gen`` row per point as
measured, ``skipped``, ``reference`` and ``gen_quality`` rows), ``env.json``, ``git.json``
and, once everything finished, ``summary.json`` (figures a, b, c). Bad flags print one
line and exit 2 before anything is measured or written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sandbox.bench_train import Results, _csv, _loadavg, build, compose_config, format_table, log
from sandbox.errors import UserError
from sandbox.runinfo import atomic_write_text
from sandbox.samplers import Ancestral, ARSampler, BD3LMSampler, FirstHitting, Threshold, TopKConfidence
from sandbox.samplers.base import OBJECTIVE_FAMILY, compile_sampler
from sandbox.train import split_model

SAMPLERS = ("ar", "ar_nocache", "mdm_ancestral", "mdm_topk_confidence", "mdm_first_hitting",
            "mdm_threshold", "bd3lm")
FAMILY_OF = ({"ar": "ar", "ar_nocache": "ar", "bd3lm": "bd3lm"}
             | {s: "mdm" for s in SAMPLERS if s.startswith("mdm")})
OBJECTIVE_OF = {"ar": "ar", "mdm": "mdlm", "bd3lm": "bd3lm"}
RUN_FLAG = {"ar": "--ar-run", "mdm": "--mdm-run", "bd3lm": "--bd3lm-run"}
FWD_LOOP = 4              # forwards per call of the in-loop bare-forward reference
STEP_TARGET = 1.15        # figure (a): time per diffusion step <= 1.15 x one bare forward
N_EXAMPLES, EXAMPLE_CHARS = 2, 400   # decoded samples kept per distribution with --quality
GROWTH_TARGET = 2.0       # figure (b): cached AR time per token grows < 2x from shortest to longest

# Presets: flag values that replace the defaults (explicit flags are not overridden).
PRESETS = {
    "quick": dict(lengths="32,64", length=32, batches="1,4", taus="0.9", steps_div="4", blocks="",
                  nocache_tokens=16, repeats=3, max_seconds=0.3, fwd_repeats=2, quality_samples=8,
                  quality_seconds=10.0),
    "demo": dict(samplers="ar,mdm_threshold,mdm_ancestral", lengths="128", length=128, batches="1,32",
                 taus="0.7,0.9", steps_div="16,4", steps_batches="1", length_div=16, blocks="",
                 repeats=3, max_seconds=1.0, fwd_repeats=2, max_call_s=20.0),
}
DEFAULTS = dict(samplers=",".join(SAMPLERS), lengths="64,128,256,512", length=128, batches="1,32",
                taus="0.7,0.8,0.9,0.95", tau=0.9, steps_div="16,8,4,2,1", steps_batches="1",
                length_div=8, blocks="16,32,64", bd3lm_blocks="4,16,64", nocache_tokens=64, prompt_len=0,
                warmup=1, repeats=5,
                max_seconds=2.0, fwd_repeats=3, max_call_s=20.0, quality_samples=32,
                quality_seconds=30.0)


# --- what is measured ------------------------------------------------------------------------
@dataclass
class Subject:
    """One model to sample from: a trained run or a randomly initialised config."""

    family: str              # ar | mdm
    objective: str           # ar | mdlm
    graphdef: object
    params: object
    tokenizer: object
    model: nnx.Module
    source: str              # "random" or the run folder
    model_name: str
    step: int | None = None
    code: bool = False
    run: object = None

    @property
    def mask_kind(self) -> str:
        return "causal" if self.family == "ar" else "bidirectional"

    def forward_len(self, length: int) -> int:
        """Sequence length of the bare forward a sampler step reads (AR: BOS + buffer)."""
        return length + 1 if self.family == "ar" else length

    def describe(self) -> dict:
        return {"family": self.family, "objective": self.objective, "source": self.source,
                "model": self.model_name, "step": self.step, "params": self.model.n_params(True),
                "dtype": str(jnp.dtype(self.model.dtype)), "tokenizer": self.tokenizer.name}


@dataclass
class Point:
    family: str
    kind: str                # a SAMPLERS name (ar_nocache is ARSampler(use_cache=False))
    sampler: object          # bound Sampler
    batch: int
    length: int
    prompt_len: int
    sweeps: list = field(default_factory=list)

    @property
    def generated(self) -> int:
        return self.length - self.prompt_len

    def key(self) -> str:
        return json.dumps([self.family, self.sampler.settings(), self.batch, self.length, self.prompt_len],
                          sort_keys=True, default=str)

    def quality_key(self) -> str:
        """Points that draw from one distribution (batch and the KV cache do not change it)."""
        s = {k: v for k, v in self.sampler.settings().items() if k != "use_cache"}
        return json.dumps([self.family, s, self.length, self.prompt_len], sort_keys=True, default=str)


def describe_settings(kind: str, s) -> str:
    """Short label of the settings that matter for each sampler."""
    if kind == "bd3lm":
        return f"block={s.block_size} {describe_settings(s.inner.name, s.inner)}"
    if kind in ("ar", "ar_nocache"):
        out = ["cache" if s.use_cache else "no cache"]
        out += [f"T={s.temperature:g}"] if s.temperature != 1 else []
        out += [f"top_k={s.top_k}"] if s.top_k else []
        out += [f"top_p={s.top_p:g}"] if s.top_p < 1 else []
    else:
        out = []
        if getattr(s, "uses_steps", False):
            out.append(f"steps={s.steps}")
        if kind == "mdm_threshold":
            out.append(f"tau={s.tau:g}")
        if s.block_size:
            out.append(f"block={s.block_size}")
        if s.grid != "uniform" and getattr(s, "uses_steps", False):
            out.append(f"grid={s.grid}")
        out += [f"T={s.temperature:g}"] if s.temperature != 1 else []
    return " ".join(out) or "-"


# --- subjects --------------------------------------------------------------------------------
def _is_code(run) -> bool:
    try:
        from sandbox.evaluate import is_code

        return bool(is_code(None, run))
    except ImportError:
        return str(run.cfg.data.get("_target_", "")).endswith("StdlibCode")


def load_subject(family: str, run_dir: str | None, model_name: str, overrides: list[str],
                 seed: int) -> Subject:
    objective = OBJECTIVE_OF[family]
    if run_dir is None:
        cfg = compose_config(model_name, objective, overrides)
        model, obj, tok = build(cfg, 2, seed)
        graphdef, params = split_model(model)
        return Subject(family, obj.name, graphdef, params, tok, model, "random", str(cfg.model.name))
    try:
        from sandbox.runs import load_run
    except ImportError:
        raise UserError(f"--{family}-run needs sandbox.runs.load_run, which this checkout lacks; "
                        "drop the flag to time randomly initialised models") from None
    flag = RUN_FLAG[family]
    if not Path(run_dir).is_dir():
        raise UserError(f"{flag} {run_dir}: no such folder; pass a run folder written by python -m "
                        "sandbox.train")
    run = load_run(run_dir)
    fam = OBJECTIVE_FAMILY.get(run.objective.name)
    if fam != family:
        other = RUN_FLAG.get(fam, "none of the run flags")
        raise UserError(f"{flag} {run_dir}: trained with objective={run.objective.name}; pass it as "
                        f"{other}")
    return Subject(family, run.objective.name, run.graphdef, run.params, run.tokenizer, run.model,
                   str(run.dir), str(run.cfg.model.get("name", "?")), step=run.step, code=_is_code(run),
                   run=run)


# --- the plan --------------------------------------------------------------------------------
def _ints(text: str, flag: str, minimum: int = 1) -> list[int]:
    out = []
    for x in _csv(text):
        try:
            v = int(x)
        except ValueError:
            raise UserError(f"{flag}: '{x}' is not an integer") from None
        if v < minimum:
            raise UserError(f"{flag}: {v} must be at least {minimum}")
        out.append(v)
    return out


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in _csv(text)]
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of numbers") from None


def plan(o, subjects: dict[str, Subject]) -> list[Point]:
    """Every point of the sweeps, deduplicated, bound to its subject's tokenizer and checked."""
    pts: dict[str, Point] = {}
    L0, P = o.length, o.prompt_len
    g0 = L0 - P

    def add(sweep, kind, sampler, batch, length, prompt_len=P):
        subj = subjects[FAMILY_OF[kind]]
        sampler = sampler.bind(subj.tokenizer)
        sampler.check(objective=subj.objective, length=length, prompt_len=prompt_len)
        p = Point(FAMILY_OF[kind], kind, sampler, batch, length, prompt_len)
        p = pts.setdefault(p.key(), p)
        if sweep not in p.sweeps:
            p.sweeps.append(sweep)

    S = o.samplers
    step_batches = o.batches if o.steps_batches == "all" else _ints(o.steps_batches, "--steps-batches")
    steps0 = sorted({max(1, g0 // d) for d in o.steps_div}, reverse=False)
    blocks = [b for b in o.blocks if b < g0]
    if "ar" in S:
        for L in o.lengths:
            add("length", "ar", ARSampler(), 1, L)
        for b in o.batches:
            add("batch", "ar", ARSampler(), b, L0)
    if "ar_nocache" in S:
        for L in o.lengths:
            p = max(P, L - o.nocache_tokens) if o.nocache_tokens else P
            add("length", "ar_nocache", ARSampler(use_cache=False), 1, L, p)
    if "mdm_ancestral" in S:
        for L in o.lengths:
            add("length", "mdm_ancestral", Ancestral(steps=max(1, (L - P) // o.length_div)), 1, L)
        for b in step_batches:
            for s in steps0:
                add("steps", "mdm_ancestral", Ancestral(steps=s), b, L0)
        for b in o.batches:
            add("batch", "mdm_ancestral", Ancestral(steps=max(1, g0 // o.length_div)), b, L0)
        for bs in blocks:
            n_blocks = -(-g0 // bs)
            add("block", "mdm_ancestral", Ancestral(steps=max(n_blocks, g0 // 4), block_size=bs), 1, L0)
    if "mdm_topk_confidence" in S:
        for b in step_batches:
            for s in steps0:
                add("steps", "mdm_topk_confidence", TopKConfidence(steps=s), b, L0)
    if "mdm_first_hitting" in S:
        add("steps", "mdm_first_hitting", FirstHitting(), 1, L0)
    if "bd3lm" in S:  # stop_at_eos off: every block is generated, so timings compare
        def bd3lm(bs):
            return BD3LMSampler(block_size=bs, inner=Ancestral(steps=max(1, bs // o.length_div)),
                                stop_at_eos=False)

        for bs in [b for b in o.bd3lm_blocks if b <= g0]:
            add("block", "bd3lm", bd3lm(bs), 1, L0)
        bs0 = 16 if 16 <= g0 else min(o.bd3lm_blocks)
        for b in o.batches:
            add("batch", "bd3lm", bd3lm(bs0), b, L0)
    if "mdm_threshold" in S:
        for L in o.lengths:
            add("length", "mdm_threshold", Threshold(tau=o.tau), 1, L)
        for b in sorted(o.batches):  # small batches first: they predict the NFE of the large ones
            for t in o.taus:
                add("tau", "mdm_threshold", Threshold(tau=t), b, L0)
        for bs in blocks:
            add("block", "mdm_threshold", Threshold(tau=o.tau, block_size=bs), 1, L0)
    return list(pts.values())


# --- timing ----------------------------------------------------------------------------------
class Forwards:
    """Bare forwards of the backbone, compiled once per (family, batch, sequence length).

    Two references per shape: ``single`` is one jitted call (what a user's forward costs,
    Python dispatch included); ``loop`` runs ``FWD_LOOP`` forwards inside one compiled
    ``fori_loop`` (each iteration's input depends on the sum of the previous logits, so
    none is hoisted or cut short) and is divided by ``FWD_LOOP``: the cost of a forward in
    the same setting as a sampler's steps, which also run inside a compiled loop.
    ``step_over_forward`` divides by the first, ``step_over_forward_loop`` by the second. They
    differ by a fixed cost per executable launch (~1 ms for the tiny model on XLA:CPU,
    measured: a loop of one forward costs what the single call does, a loop of four costs
    ~20% less per forward at batch 1, length 128)."""

    def __init__(self, subjects: dict[str, Subject], seed: int = 0):
        self.subjects, self.seed = subjects, seed
        self.fns: dict[tuple, tuple] = {}
        self.compile_s: dict[tuple, float] = {}
        self.best: dict[tuple, float] = {}   # the last median measured, for predictions

    def get(self, family: str, batch: int, seq: int):
        k = (family, batch, seq)
        if k not in self.fns:
            s = self.subjects[family]
            mask, gd = s.mask_kind, s.graphdef

            def one(p, x):
                return nnx.merge(gd, p)(x, mask_kind=mask)

            def loop(p, x):
                model = nnx.merge(gd, p)

                def body(_, carry):
                    x, acc = carry
                    # sum every logit: a slice would let XLA skip most of the forward
                    y = jnp.sum(model(x, mask_kind=mask))
                    return x + (y > 3e38).astype(x.dtype), acc + y   # never true: a dependence only

                return jax.lax.fori_loop(0, FWD_LOOP, body, (x, jnp.float32(0)))[1]

            rng = np.random.default_rng(self.seed)
            x = jnp.asarray(rng.integers(0, s.tokenizer.n_text, (batch, seq), dtype=np.int32))
            t0 = time.perf_counter()
            single = jax.jit(one).lower(s.params, x).compile()
            self.compile_s[k] = time.perf_counter() - t0
            looped = jax.jit(loop).lower(s.params, x).compile()
            jax.block_until_ready((single(s.params, x), looped(s.params, x)))  # warm-up
            self.fns[k] = (single, looped, x, s.params)
        return self.fns[k]

    def time(self, family: str, batch: int, seq: int, n: int) -> tuple[list[float], list[float]]:
        """``n`` single calls and one loop call: (single seconds, loop seconds per forward)."""
        single, looped, x, params = self.get(family, batch, seq)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(single(params, x))
            out.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(looped(params, x))
        per = (time.perf_counter() - t0) / FWD_LOOP
        self.best[(family, batch, seq)] = statistics.median(out)
        return out, [per]

    def estimate(self, family: str, batch: int, seq: int) -> float:
        k = (family, batch, seq)
        if k not in self.best:
            self.time(family, batch, seq, 2)
        return self.best[k]


def predict_nfe(p: Point, measured: list[dict]) -> int:
    """Full forwards to predict a call's cost with before running it (an upper bound where
    known). bd3lm calls read one block each (plus the cache), so a whole generation costs
    about (steps per block + 1 commit) full forwards; doubled for the cache reads."""
    s = p.sampler
    if p.kind == "bd3lm":
        steps = s.inner.steps if getattr(s.inner, "uses_steps", False) else s.block_size
        return 2 * (int(steps) + 1)
    if p.kind == "mdm_threshold":
        same = [r["nfe"] for r in measured
                if r["sampler"] == "mdm_threshold" and r["settings"] == s.settings() and r["batch"] < p.batch
                and (r["length"], r["prompt_len"]) == (p.length, p.prompt_len)]
        return int(max(same)) if same else p.generated
    if getattr(s, "uses_steps", False):
        return int(s.steps)
    return p.generated


def time_point(p: Point, subj: Subject, fwd: Forwards, o, idx: int) -> tuple[dict, object, list]:
    """Compile, warm up and time one point. Returns (row, compiled fn, outputs [calls])."""
    load0 = _loadavg()
    rng = np.random.default_rng(o.seed + idx)
    prompt = jnp.asarray(rng.integers(0, subj.tokenizer.n_text, (p.batch, p.prompt_len), dtype=np.int32))
    base = jax.random.PRNGKey(o.seed + idx)
    fn = compile_sampler(p.sampler, subj.graphdef, p.length)
    t0 = time.perf_counter()
    compiled = fn.lower(subj.params, base, prompt).compile()
    compile_s = time.perf_counter() - t0
    seq = subj.forward_len(p.length)
    fwd.get(p.family, p.batch, seq)
    outs, lat, nfes, fwd_times, loop_times = [], [], [], [], []
    for i in range(o.warmup):
        outs.append(jax.block_until_ready(compiled(subj.params, jax.random.fold_in(base, i), prompt)))
    i = o.warmup
    while True:
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(subj.params, jax.random.fold_in(base, i), prompt))
        lat.append(time.perf_counter() - t0)
        outs.append(out)
        nfes.append(int(out[1]))
        single, looped = fwd.time(p.family, p.batch, seq, o.fwd_repeats)
        fwd_times += single
        loop_times += looped
        i += 1
        if len(lat) >= o.repeats or sum(lat) >= o.max_seconds:
            break
    latency = statistics.median(lat)
    nfe = float(np.mean(nfes))
    forward_s = statistics.median(fwd_times)
    forward_loop_s = statistics.median(loop_times)
    per_nfe = statistics.median(t / max(n, 1) for t, n in zip(lat, nfes))
    gen = p.generated
    row = {"kind": "gen", "point": idx, "sweeps": list(p.sweeps), "family": p.family,
           "objective": subj.objective, "model": subj.model_name, "model_source": subj.source,
           "model_step": subj.step, "sampler": p.sampler.name, "label": p.kind,
           "settings": p.sampler.settings(), "settings_text": describe_settings(p.kind, p.sampler),
           "batch": p.batch, "length": p.length, "prompt_len": p.prompt_len, "generated": gen,
           "nfe": nfe, "nfe_samples": nfes, "latency_s": latency, "latency_s_min": min(lat),
           "latency_s_samples": [round(t, 6) for t in lat],
           "latency_per_seq_s": latency / p.batch, "latency_per_token_s": latency / gen,
           "tokens_per_s": p.batch * gen / latency, "tokens_per_forward": gen / nfe if nfe else None,
           "time_per_nfe_s": per_nfe, "forward_s": forward_s, "forward_shape": [p.batch, seq],
           "forward_mask": subj.mask_kind, "forward_samples": [round(t, 6) for t in fwd_times],
           "step_over_forward": per_nfe / forward_s, "forward_loop_s": forward_loop_s,
           "forward_loop_samples": [round(t, 6) for t in loop_times],
           "step_over_forward_loop": per_nfe / forward_loop_s, "compile_s": compile_s,
           "forward_compile_s": fwd.compile_s.get((p.family, p.batch, seq)), "warmup_calls": o.warmup,
           "timed_calls": len(lat), "quality": None, "load_before": load0, "load_after": _loadavg(),
           "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "dtype": str(jnp.dtype(subj.model.dtype))}
    return row, (compiled, prompt, base, i), outs


# --- quality ---------------------------------------------------------------------------------
def _quality_module():
    try:
        from sandbox import quality
    except ImportError:
        raise UserError("--quality needs sandbox.quality (sample_quality), which this checkout lacks; "
                        "drop --quality") from None
    return quality


def score(subj: Subject, tokens: np.ndarray, prompt_len: int, judge, quality) -> dict:
    gen = np.asarray(tokens)[:, prompt_len:]
    texts = [subj.tokenizer.decode(t) for t in gen]
    return quality.sample_quality(texts, gen, judge=judge, code=subj.code)


def quality_pass(groups: dict, subjects, o, judge, res: Results, rows_by_point: dict) -> list[dict]:
    """Pool the samples of each distribution, top them up, score them; one row per group."""
    quality = _quality_module()
    out = []
    for g in groups.values():
        subj = subjects[g["family"]]
        toks = [np.asarray(t) for t in g["tokens"]]
        n = sum(len(t) for t in toks)
        compiled, prompt, base, i = g["fn"]
        t_start = time.perf_counter()
        while n < o.quality_samples and time.perf_counter() - t_start < o.quality_seconds:
            t, _ = jax.block_until_ready(compiled(subj.params, jax.random.fold_in(base, 10_000 + i), prompt))
            i += 1
            toks.append(np.asarray(t))
            n += len(toks[-1])
        tokens = np.concatenate(toks)[: max(o.quality_samples, 1)]
        q = score(subj, tokens, g["prompt_len"], judge, quality)
        examples = [subj.tokenizer.decode(t[g["prompt_len"]:])[:EXAMPLE_CHARS] for t in tokens[:N_EXAMPLES]]
        row = res.add({"kind": "gen_quality", "points": g["points"], "family": g["family"],
                       "sampler": g["sampler"], "settings": g["settings"],
                       "settings_text": g["settings_text"], "length": g["length"],
                       "prompt_len": g["prompt_len"], "judge": o.judge, "code": subj.code,
                       "quality": q, "examples": examples})
        for pid in g["points"]:
            rows_by_point[pid]["quality"] = q
        out.append(row)
    return out


def reference_rows(subjects, lengths: set[tuple[str, int, int]], o, judge, res: Results) -> dict:
    """Statistics of held-out text of each generated length, for trained subjects."""
    quality = _quality_module()
    refs = {}
    try:
        from sandbox.evaluate import reference_windows
    except ImportError:
        return refs
    for fam, length, prompt_len in sorted(lengths):
        subj = subjects[fam]
        if subj.run is None:
            continue
        gen = length - prompt_len
        try:
            windows = reference_windows(subj.run, "val", o.quality_samples, gen)
        except UserError as e:
            log(f"  no reference for {fam} length {gen}: {e}")
            continue
        q = score(subj, windows, 0, judge, quality)
        refs[(fam, length, prompt_len)] = q
        res.add({"kind": "reference", "family": fam, "run": subj.source, "split": "val", "length": length,
                 "prompt_len": prompt_len, "generated": gen, "quality": q})
    return refs


# --- summary ---------------------------------------------------------------------------------
def _q_figure(q: dict | None, ref: dict | None = None) -> str:
    if not q:
        return "-"
    if q.get("gen_ppl") is not None:
        return f"gen-ppl {q['gen_ppl']:.2f}"
    s = f"entropy {q['unigram_entropy']:.2f}"
    if ref:
        s += f" (real {ref['unigram_entropy']:.2f})"
    return s


def summarize(rows: list[dict], refs: dict | None = None) -> dict:
    """Figures (a), (b), (c) from the gen rows (also used by analysis.speed)."""
    refs = refs or {}
    out: dict = {"a": {}, "b": {}, "c": {}}
    # (a) time per model call of each diffusion sampler (and AR without cache) vs one bare
    # forward of the same shape: a jitted call, and a forward inside a compiled loop
    def ratios(key, rs):
        v = [r[key] for r in rs if r.get(key)]
        return {"median": statistics.median(v), "max": max(v), "min": min(v), "points": len(v),
                "within": sum(x <= STEP_TARGET for x in v), "target": STEP_TARGET} if v else None

    names = sorted({r["sampler"] for r in rows if r["family"] == "mdm"}) + ["ar_nocache"]
    for name in names:
        rs = [r for r in rows if (r["label"] if name == "ar_nocache" else r["sampler"]) == name]
        if rs and ratios("step_over_forward", rs):
            out["a"][name] = {**ratios("step_over_forward", rs), "loop": ratios("step_over_forward_loop", rs)}
    # (b) AR time per generated token at batch 1, shortest vs longest output, cache vs none
    for label in ("ar", "ar_nocache"):
        rs = sorted((r for r in rows if r["label"] == label and r["batch"] == 1 and "length" in r["sweeps"]),
                    key=lambda r: r["length"])
        if len(rs) >= 2:
            lo, hi = rs[0], rs[-1]
            out["b"][label] = {"length_lo": lo["length"], "length_hi": hi["length"],
                               "per_token_lo_s": lo["latency_per_token_s"],
                               "per_token_hi_s": hi["latency_per_token_s"],
                               "growth": hi["latency_per_token_s"] / lo["latency_per_token_s"],
                               "length_ratio": hi["length"] / lo["length"],
                               "per_token_s": {r["length"]: r["latency_per_token_s"] for r in rs}}
    if "ar" in out["b"]:
        out["b"]["ar"]["target"] = GROWTH_TARGET
    # (c) mdm_threshold against AR (cache) at each batch of the tau sweep
    for b in sorted({r["batch"] for r in rows if r["sampler"] == "mdm_threshold" and "tau" in r["sweeps"]}):
        th = [r for r in rows if r["sampler"] == "mdm_threshold" and "tau" in r["sweeps"] and r["batch"] == b]
        ar = [r for r in rows if r["label"] == "ar" and r["batch"] == b and r["length"] == th[0]["length"]
              and r["prompt_len"] == th[0]["prompt_len"]]
        a = ar[0] if ar else None
        entry = {"length": th[0]["length"], "ar": None, "threshold": []}
        if a:
            entry["ar"] = {"latency_per_seq_s": a["latency_per_seq_s"], "tokens_per_s": a["tokens_per_s"],
                           "nfe": a["nfe"], "quality": a.get("quality")}
        for r in sorted(th, key=lambda r: r["settings"]["tau"]):
            entry["threshold"].append({
                "tau": r["settings"]["tau"], "nfe": r["nfe"], "tokens_per_forward": r["tokens_per_forward"],
                "latency_per_seq_s": r["latency_per_seq_s"], "tokens_per_s": r["tokens_per_s"],
                "speedup_vs_ar": a["latency_s"] / r["latency_s"] if a else None, "quality": r.get("quality")})
        out["c"][str(b)] = entry
    return out


def format_summary(s: dict, rows: list[dict], skipped: list[dict], refs: dict, random_fams: list[str]) -> str:
    lines = ["", "Summary"]
    lines.append(f"(a) time per model call / one bare forward of the same shape (target <= {STEP_TARGET}):")
    if not s["a"]:
        lines.append("    no diffusion points measured")
    def verdict(a):
        missed = a["points"] - a["within"]
        return "met" if not missed else f"NOT met at {missed} of {a['points']}"

    for name, a in s["a"].items():
        lines.append(f"    {name:<20} vs a jitted call: median {a['median']:.3f}, min {a['min']:.3f}, max "
                     f"{a['max']:.3f} over {a['points']} points: {verdict(a)}")
        if a.get("loop"):
            lp = a["loop"]
            lines.append(f"    {'':<20} vs a forward in a compiled loop: median {lp['median']:.3f}, "
                         f"min {lp['min']:.3f}, max {lp['max']:.3f}: {verdict(lp)}")
    ar_ratio = [r["step_over_forward"] for r in rows if r["label"] == "ar"]
    if ar_ratio:
        lines.append(f"    {'ar (KV cache)':<20} a cached step costs {min(ar_ratio):.3f} .. "
                     f"{max(ar_ratio):.3f} of a full causal forward of the buffer")
    lines.append(f"(b) AR time per generated token at batch 1 (cache target: grows < {GROWTH_TARGET:g}x):")
    if not s["b"]:
        lines.append("    needs ar / ar_nocache at two or more --lengths")
    for label, b in s["b"].items():
        name = "KV cache" if label == "ar" else "no cache"
        per = ", ".join(f"{k}: {1e3 * v:.3f}" for k, v in b["per_token_s"].items())
        verdict = ""
        if label == "ar":
            verdict = "; target met" if b["growth"] < GROWTH_TARGET else "; target NOT met"
        lines.append(f"    {name:<9} ms/token {per} -> x{b['growth']:.2f} from {b['length_lo']} to "
                     f"{b['length_hi']} (lengths x{b['length_ratio']:g}){verdict}")
    lines.append("(c) mdm_threshold against AR with the KV cache:")
    if not s["c"]:
        lines.append("    needs mdm_threshold points of the tau sweep")
    for b, c in s["c"].items():
        a = c["ar"]
        head = f"    batch {b}, length {c['length']}: AR "
        if a:
            ref = refs.get(("ar", c["length"], 0))
            head += (f"{1e3 * a['latency_per_seq_s']:.1f} ms/seq, {a['tokens_per_s']:,.0f} tokens/s"
                     + (f", {_q_figure(a['quality'], ref)}" if a.get("quality") else ""))
        else:
            head += "not measured"
        lines.append(head)
        ref = refs.get(("mdm", c["length"], 0))
        for t in c["threshold"]:
            sp = f", x{t['speedup_vs_ar']:.2f} AR's speed" if t["speedup_vs_ar"] else ""
            q = f", {_q_figure(t['quality'], ref)}" if t.get("quality") else ""
            lines.append(f"      tau {t['tau']:<5g} NFE {t['nfe']:.1f} ({t['tokens_per_forward']:.2f} "
                         f"tokens/forward), {1e3 * t['latency_per_seq_s']:.1f} ms/seq, "
                         f"{t['tokens_per_s']:,.0f} tokens/s{sp}{q}")
    for sk in skipped:
        lines.append(f"    skipped: {sk['label']} {sk['settings_text']} batch {sk['batch']} "
                     f"length {sk['length']}: {sk['reason']}")
    if random_fams:
        flags = "/".join(RUN_FLAG.values())
        lines.append(f"note: {', '.join(random_fams)} weights are random (no {flags}): speed "
                     "does not depend on the weights, except mdm_threshold's NFE (no token reaches tau, so "
                     "one token per call) and ancestral's skipped calls; quality figures of random weights "
                     "mean nothing")
    return "\n".join(lines)


COLUMNS = [("sampler", "label", "{}"), ("settings", "settings_text", "{}"), ("sweeps", "sweeps_text", "{}"),
           ("B", "batch", "{}"), ("L", "length", "{}"), ("P", "prompt_len", "{}"), ("NFE", "nfe", "{:.1f}"),
           ("tok/fwd", "tokens_per_forward", "{:.2f}"), ("call s", "latency_s", "{:.4f}"),
           ("ms/seq", "ms_per_seq", "{:,.2f}"), ("ms/token", "ms_per_token", "{:.3f}"),
           ("tokens/s", "tokens_per_s", "{:,.0f}"), ("fwd ms", "fwd_ms", "{:,.2f}"),
           ("step/fwd", "step_over_forward", "{:.3f}"), ("step/loop", "step_over_forward_loop", "{:.3f}"),
           ("compile s", "compile_s", "{:.1f}"),
           ("calls", "timed_calls", "{}"), ("quality", "quality_text", "{}")]


def table(rows: list[dict], refs: dict) -> str:
    shown = []
    for r in rows:
        ref = refs.get((r["family"], r["length"], r["prompt_len"]))
        shown.append({**r, "sweeps_text": ",".join(r["sweeps"]), "ms_per_seq": 1e3 * r["latency_per_seq_s"],
                      "ms_per_token": 1e3 * r["latency_per_token_s"], "fwd_ms": 1e3 * r["forward_s"],
                      "quality_text": _q_figure(r.get("quality"), ref)})
    return format_table(shown, COLUMNS)


# --- the `gen` subcommand of `python -m sandbox.bench` -------------------------------------------
def add_arguments(p) -> None:
    d = "(default %(default)s)"
    p.add_argument("--ar-run", default=None, help="trained objective=ar run folder (default: random)")
    p.add_argument("--mdm-run", default=None, help="trained objective=mdlm run folder (default: random)")
    p.add_argument("--bd3lm-run", default=None, help="trained objective=bd3lm run folder (default: random)")
    p.add_argument("--model", default="tiny", help="conf/model/ name of the random models " + d)
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for the random models, e.g. -o model.n_layers=2 (repeatable)")
    p.add_argument("--samplers", default=None, help=f"comma-separated subset of {','.join(SAMPLERS)} (all)")
    p.add_argument("--lengths", default=None, help="output lengths of the length sweep (64,128,256,512)")
    p.add_argument("--length", type=int, default=None,
                   help="output length of the batch, steps, tau and block sweeps (128)")
    p.add_argument("--batches", default=None, help="batch sizes of the batch and tau sweeps (1,32)")
    p.add_argument("--taus", default=None, help="mdm_threshold taus (0.7,0.8,0.9,0.95)")
    p.add_argument("--tau", type=float, default=None, help="tau of the threshold length/block sweeps (0.9)")
    p.add_argument("--steps-div", default=None,
                   help="steps sweep as divisors of the generated length: 16,8,4,2,1 = L/16 .. L")
    p.add_argument("--steps-batches", default=None,
                   help="batches the steps sweep runs at: comma list or 'all' (= --batches) (1)")
    p.add_argument("--length-div", type=int, default=None,
                   help="ancestral steps in the length and batch sweeps = generated / this (8)")
    p.add_argument("--blocks", default=None, help="semi-AR block sizes of the block sweep (16,32,64; '')")
    p.add_argument("--bd3lm-blocks", default=None,
                   help="bd3lm block sizes (4,16,64); ancestral inside, block/--length-div steps per block")
    p.add_argument("--prompt-len", type=int, default=None, help="random prompt tokens before the output (0)")
    p.add_argument("--nocache-tokens", type=int, default=None,
                   help="ar_nocache generates the last N tokens of each length (64; 0 = all)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after compiling (1)")
    p.add_argument("--repeats", type=int, default=None, help="at most this many timed calls per point (5)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing a point once its timed calls pass this many seconds (2; >= 1 call)")
    p.add_argument("--fwd-repeats", type=int, default=None,
                   help="bare-forward calls timed after each timed sampler call (3)")
    p.add_argument("--max-call-s", type=float, default=None,
                   help="skip points whose predicted call exceeds this many seconds (20; 0 = never)")
    p.add_argument("--quality", action="store_true", help="score the samples (sandbox.quality)")
    p.add_argument("--judge", default=None, help="AR judge run for gen-perplexity (implies --quality)")
    p.add_argument("--quality-samples", type=int, default=None,
                   help="samples per distribution for --quality (32)")
    p.add_argument("--quality-seconds", type=float, default=None,
                   help="at most this long topping up one distribution's samples (30)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, prompts and keys (0)")
    p.add_argument("--out", default="runs/bench", help="results go to <out>/gen-<timestamp>/ (runs/bench)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a fast check (< 1 min on a 2-core CPU)")
    g.add_argument("--demo", action="store_true",
                   help="the `make demo` preset: length 128, batch 1 and 32, AR, threshold x2 taus, "
                        "ancestral x2 step counts")


def resolve(args) -> argparse.Namespace:
    """Flags -> validated options (presets fill what was not given). UserError on bad values."""
    vals = dict(DEFAULTS)
    if args.quick:
        vals.update(PRESETS["quick"])
    if args.demo:
        vals.update(PRESETS["demo"])
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            vals[k] = v
    o = argparse.Namespace(**vals)
    o.samplers = _csv(o.samplers)
    bad = [s for s in o.samplers if s not in SAMPLERS]
    if bad or not o.samplers:
        raise UserError(f"--samplers: unknown '{','.join(bad) or '(empty)'}' "
                        f"(choose from {','.join(SAMPLERS)})")
    o.lengths = _ints(o.lengths, "--lengths", 2)
    o.batches = _ints(o.batches, "--batches", 1)
    o.steps_div = _ints(o.steps_div, "--steps-div", 1)
    o.blocks = _ints(o.blocks, "--blocks", 1)
    o.bd3lm_blocks = _ints(o.bd3lm_blocks, "--bd3lm-blocks", 1)
    o.taus = _floats(o.taus, "--taus")
    if not o.lengths or not o.batches:
        raise UserError("--lengths and --batches must each name at least one value")
    for t in [*o.taus, o.tau]:
        if not 0 < t <= 1:
            raise UserError(f"--taus/--tau: {t} must be in (0, 1]")
    if o.steps_batches != "all":
        _ints(o.steps_batches, "--steps-batches", 1)
    for name, minimum in (("length", 2), ("length_div", 1), ("warmup", 0), ("repeats", 1), ("fwd_repeats", 1),
                          ("prompt_len", 0), ("nocache_tokens", 0), ("quality_samples", 1)):
        if int(getattr(o, name)) < minimum:
            raise UserError(f"--{name.replace('_', '-')} {getattr(o, name)} must be at least {minimum}")
    for name in ("max_seconds", "max_call_s", "quality_seconds"):
        if float(getattr(o, name)) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    for L in [*o.lengths, o.length]:
        if o.prompt_len >= L:
            raise UserError(f"--prompt-len {o.prompt_len} is not shorter than the output length {L}")
    o.judge = args.judge
    o.quality = bool(args.quality or args.judge)
    o.seed = args.seed
    return o


def run(args) -> dict:
    o = resolve(args)
    if o.quality:
        _quality_module()
    fams = sorted({FAMILY_OF[s] for s in o.samplers})
    runs = {"ar": args.ar_run, "mdm": args.mdm_run, "bd3lm": args.bd3lm_run}
    subjects = {f: load_subject(f, runs[f], args.model, args.override, args.seed) for f in fams}
    for f, s in subjects.items():
        need = max(s.forward_len(L) for L in [*o.lengths, o.length])
        if need > s.model.max_len:
            raise UserError(f"--lengths/--length: a {f} step reads {need} tokens, beyond model.max_len="
                            f"{s.model.max_len} of {s.source}; lower the lengths")
    judge = None
    if o.judge:
        judge = _quality_module().load_judge(o.judge)
        for f, s in subjects.items():
            if judge.vocab_size != s.tokenizer.vocab_size:
                raise UserError(f"--judge {o.judge}: vocabulary {judge.vocab_size} is not the {f} model's "
                                f"({s.tokenizer.vocab_size}); the judge must use the samples' tokenizer")
    blocks_dropped = [b for b in o.blocks if b >= o.length - o.prompt_len]
    points = plan(o, subjects)  # every sampler setting checked before anything is measured
    random_fams = [f for f, s in subjects.items() if s.source == "random"]
    dev = jax.devices()[0]
    meta = {"bench": "gen", "argv": sys.argv[1:], "options": {k: v for k, v in vars(o).items()},
            "subjects": {f: s.describe() for f, s in subjects.items()}, "random_weights": random_fams,
            "points": len(points), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
            "device": dev.device_kind}
    res = Results(args.out, "gen", meta=meta)
    log(f"device: {jax.default_backend()} {dev.device_kind} x{jax.device_count()}, cpus {os.cpu_count()}, "
        f"load {_loadavg()}; {len(points)} points")
    for f, s in subjects.items():
        log(f"  {f}: {s.source} ({s.model_name}, {s.model.n_params(True):,} non-embedding params"
            + (f", step {s.step})" if s.step is not None else ")"))
    if blocks_dropped:
        log(f"  block sizes {blocks_dropped} are not below the generated length "
            f"{o.length - o.prompt_len}: dropped")
    fwd = Forwards(subjects, args.seed)
    rows, skipped, groups, by_point = [], [], {}, {}
    for idx, p in enumerate(points):
        subj = subjects[p.family]
        text = describe_settings(p.kind, p.sampler)
        if o.max_call_s and p.kind != "ar":
            pred = predict_nfe(p, rows) * fwd.estimate(p.family, p.batch, subj.forward_len(p.length))
            if pred > o.max_call_s:
                sk = res.add({"kind": "skipped", "point": idx, "label": p.kind, "sampler": p.sampler.name,
                              "settings": p.sampler.settings(), "settings_text": text, "batch": p.batch,
                              "length": p.length, "sweeps": p.sweeps, "predicted_call_s": pred,
                              "reason": f"predicted {pred:.0f} s per call > --max-call-s {o.max_call_s:g}"})
                skipped.append(sk)
                log(f"[{idx + 1}/{len(points)}] {p.kind} {text} batch {p.batch} length {p.length}: skipped "
                    f"({sk['reason']})")
                continue
        log(f"[{idx + 1}/{len(points)}] {p.kind} {text} batch {p.batch} length {p.length} "
            f"prompt {p.prompt_len} ...")
        row, fn, outs = time_point(p, subj, fwd, o, idx)
        rows.append(res.add(row))
        by_point[idx] = row
        log(f"  {1e3 * row['latency_s']:,.1f} ms/call, NFE {row['nfe']:.1f}, "
            f"{row['tokens_per_s']:,.0f} tokens/s, step/fwd {row['step_over_forward']:.3f} "
            f"(compile {row['compile_s']:.1f} s, "
            f"{row['timed_calls']} timed calls, load {row['load_after']})")
        if o.quality:
            g = groups.setdefault(p.quality_key(), {"family": p.family, "sampler": p.sampler.name,
                                                    "settings": p.sampler.settings(),
                                                    "settings_text": describe_settings(p.kind, p.sampler),
                                                    "length": p.length, "prompt_len": p.prompt_len,
                                                    "points": [], "tokens": [], "fn": None, "batch": 0})
            g["points"].append(idx)
            g["tokens"] += [np.asarray(t) for t, _ in outs]
            if p.batch > g["batch"]:  # top-ups use the largest batch's function
                g["fn"], g["batch"] = fn, p.batch
        del outs
    refs = {}
    if o.quality:
        log(f"quality of {len(groups)} sample sets ({o.quality_samples} samples each"
            + (f", judge {o.judge})" if o.judge else
               ", no judge: gen-ppl needs --judge <experiment=judge run>)"))
        quality_pass(groups, subjects, o, judge, res, by_point)
        shapes = {(g["family"], g["length"], g["prompt_len"]) for g in groups.values()}
        refs = reference_rows(subjects, shapes, o, judge, res)
    summary = summarize(rows, refs)
    masks = "/".join(sorted({s.mask_kind for s in subjects.values()}))
    print(f"\nGeneration speed ({jax.default_backend()}: {dev.device_kind}, {os.cpu_count()} cpus; median of "
          f"timed calls after {o.warmup} warm-up; fwd = bare {masks} forward of the same shape timed between "
          f"the calls; step/fwd = (call / NFE) / fwd; step/loop: the same over a forward inside a compiled "
          f"loop of {FWD_LOOP})")
    for f, s in subjects.items():
        print(f"  {f}: {s.source} {s.model_name}" + (f" step {s.step}" if s.step is not None else ""))
    print(table(rows, refs))
    print(format_summary(summary, rows, skipped, refs, random_fams))
    if res._open:
        summary_full = {**summary, "random_weights": random_fams, "skipped": len(skipped),
                        "points": len(rows), "load_after": _loadavg()}
        atomic_write_text(res.dir / "summary.json", json.dumps(summary_full, indent=1, default=str) + "\n")
    print(f"\nload average (1 min): {_loadavg()}; results: {res.path}")
    return {"dir": str(res.dir), "rows": rows, "skipped": skipped, "summary": summary}
