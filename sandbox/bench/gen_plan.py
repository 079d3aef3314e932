"""What the generation benchmark measures: its presets, the models (subjects) and the points.

- :data:`DEFAULTS` / :data:`PRESETS`: flag values; a preset (``--quick``, ``--demo``)
  replaces defaults, never a flag given explicitly (``sandbox.bench.gen.resolve``).
- A :class:`Subject` is one model to sample from per sampler family: a trained run
  (``--ar-run`` / ``--mdm-run`` / ``--bd3lm-run``: ``sandbox.core.runs.load_run``, EMA
  weights), or a randomly initialised ``--model`` built by the one recipe
  (``sandbox.core.build``). A run pairs with a family through its objective's own
  ``sampler_family``; a random subject of a family uses the first objective config
  (``conf/objective/*.yaml``, sorted) whose objective declares that family
  (:func:`objective_for_family`), so a new objective needs no table here.
- A :class:`Point` is one compiled sampler call: sampler settings x batch x length x
  prompt length. :func:`plan` expands the sweeps into points (identical points from two
  sweeps are timed once; ``sweeps`` lists both), binds each sampler to its subject's
  tokenizer and checks it against the subject (``Sampler.check``), so every setting is
  refused in one line before anything is measured. Each sampler also takes what its
  subject's training fixes (``Sampler.for_checkpoint``): a masked-diffusion subject trained,
  or built with ``-o objective.prompt_attention=self``, decodes with the exact prompt cache
  (``--no-prompt-cache``: the uncached reference, a full forward per step).

The tables here are about samplers (``FAMILY_OF``: which family each benchmark sampler
label reads; ``RUN_FLAG``: the flag that gives a family a trained run), not objectives.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from analysis.gen_summary import RUN_FLAG  # the trained-run flags, shared with the summary
from sandbox.bench.results import int_list
from sandbox.core.build import build, compose
from sandbox.core.cli import CONF_DIR, instantiate
from sandbox.core.errors import UserError
from sandbox.data.tokenizers import ByteTokenizer
from sandbox.samplers import (
    Ancestral,
    ARSampler,
    BD3LMSampler,
    FirstHitting,
    ReMDM,
    Threshold,
    TopKConfidence,
)

SAMPLERS = ("ar", "ar_nocache", "mdm_ancestral", "mdm_topk_confidence", "mdm_first_hitting",
            "mdm_threshold", "mdm_remask", "bd3lm")
FAMILY_OF = ({"ar": "ar", "ar_nocache": "ar", "bd3lm": "bd3lm"}
             | {s: "mdm" for s in SAMPLERS if s.startswith("mdm")})

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
                length_div=8, blocks="16,32,64", block_steps_div="4", caches="prefix,dual",
                bd3lm_blocks="4,16,64", nocache_tokens=64, prompt_len=0,
                warmup=1, repeats=5,
                max_seconds=2.0, fwd_repeats=3, max_call_s=20.0, quality_samples=32,
                quality_seconds=30.0)


# --- what is measured ------------------------------------------------------------------------------
@dataclass
class Subject:
    """One model to sample from: a trained run or a randomly initialised config."""

    family: str              # the objective's sampler_family: ar | mdm | bd3lm
    objective: str           # the objective's name (mdlm, bd3lm ...)
    graphdef: object
    params: object
    tokenizer: object
    model: nnx.Module
    source: str              # "random" or the run folder
    model_name: str
    step: int | None = None
    code: bool = False
    run: object = None
    trained: object = None   # the bound objective (what the samplers' for_checkpoint reads)

    @property
    def mask_kind(self) -> str:
        """The bare forward's mask: AR's, or a masked-diffusion run's own (objective.mask_kind)."""
        if self.family == "ar":
            return "causal"
        kind = getattr(self.trained, "mask_kind", None) if self.family == "mdm" else None
        return "causal" if kind == "causal" else "bidirectional"

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
        s = {k: v for k, v in self.sampler.settings().items() if k not in ("use_cache", "prompt_cache")}
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
        if kind == "mdm_remask":
            out.append(f"eta={s.eta:g} t_on={s.t_on:g}")
        if s.block_size:
            out.append(f"block={s.block_size}")
        if s.grid != "uniform" and getattr(s, "uses_steps", False):
            out.append(f"grid={s.grid}")
        out += [f"T={s.temperature:g}"] if s.temperature != 1 else []
        if getattr(s, "cache", "none") != "none":
            out.append(f"{s.cache} cache")
        if getattr(s, "prompt_attention", "full") == "self":
            out.append("prompt cache" if s.prompt_cache else "prompt self, no cache")
    return " ".join(out) or "-"


# --- subjects --------------------------------------------------------------------------------------
@functools.cache
def objective_for_family(family: str) -> str:
    """The first ``conf/objective/<stem>.yaml`` (sorted) whose objective declares
    ``sampler_family == family`` and trains on plain token windows (no ``required_fields``,
    such as edit-native diffusion's): what a random-weight subject of that family trains with."""
    for path in sorted((Path(CONF_DIR) / "objective").glob("*.yaml")):
        cfg = compose([f"objective={path.stem}"])
        o = instantiate(cfg.objective, "objective")
        if o.sampler_family == family and not o.required_fields:
            return path.stem
    raise UserError(f"no objective in conf/objective/ declares sampler_family={family}; "
                    "drop its samplers from --samplers")


def load_subject(family: str, run_dir: str | None, model_name: str, overrides: list[str],
                 seed: int) -> Subject:
    """The model ``family``'s samplers read: the run in ``run_dir``, or (None) a random ``model_name``."""
    if run_dir is None:
        cfg = compose([f"model={model_name}", f"objective={objective_for_family(family)}", *overrides,
                       f"seed={seed}"])
        b = build(cfg, tokenizer=ByteTokenizer(), data=False)
        return Subject(family, b.objective.name, b.graphdef, b.params, b.tokenizer, b.model, "random",
                       str(cfg.model.name), trained=b.objective)
    from sandbox.core.runs import load_run
    from sandbox.eval.quality import is_code

    flag = RUN_FLAG[family]
    if not Path(run_dir).is_dir():
        raise UserError(f"{flag} {run_dir}: no such folder; pass a run folder written by python -m "
                        "sandbox.train")
    run = load_run(run_dir)
    fam = run.objective.sampler_family
    if fam != family:
        other = RUN_FLAG.get(fam, "none of the run flags")
        raise UserError(f"{flag} {run_dir}: trained with objective={run.objective.name} (sampler family "
                        f"{fam}); pass it as {other}")
    return Subject(family, run.objective.name, run.graphdef, run.params, run.tokenizer, run.model,
                   str(run.dir), str(run.cfg.model.get("name", "?")), step=run.step,
                   code=bool(is_code(None, run)), run=run, trained=run.objective)


# --- the plan --------------------------------------------------------------------------------------
def plan(o, subjects: dict[str, Subject]) -> list[Point]:
    """Every point of the sweeps, deduplicated, bound to its subject's tokenizer and checked."""
    pts: dict[str, Point] = {}
    L0, P = o.length, o.prompt_len
    g0 = L0 - P

    def add(sweep, kind, sampler, batch, length, prompt_len=P):
        subj = subjects[FAMILY_OF[kind]]
        sampler = sampler.bind(subj.tokenizer).for_checkpoint(subj.trained)
        if not getattr(o, "prompt_cache", True) and hasattr(sampler, "prompt_cache"):
            sampler = sampler.replace(prompt_cache=False)
        sampler.check(family=subj.family, objective=subj.objective, length=length, prompt_len=prompt_len)
        p = Point(FAMILY_OF[kind], kind, sampler, batch, length, prompt_len)
        p = pts.setdefault(p.key(), p)
        if sweep not in p.sweeps:
            p.sweeps.append(sweep)

    S = o.samplers
    step_batches = o.batches if o.steps_batches == "all" else int_list(o.steps_batches, "--steps-batches")
    steps0 = sorted({max(1, g0 // d) for d in o.steps_div})
    blocks = [b for b in o.blocks if b < g0]
    mdm = subjects.get("mdm")
    causal = getattr(mdm, "mask_kind", None) == "causal"
    if causal and getattr(o, "caches", ()) and any(k.startswith("mdm_") for k in S):
        print("note: the masked-diffusion run is a causal denoiser (objective.mask_kind=causal): its block "
              "points run without the approximate block caches, which read blocks bidirectionally")

    def caches(bs):
        return ["none"] if causal else _caches(o, g0, bs)

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
            for b in sorted({1, max(o.batches)}):
                for c in caches(bs):
                    for d in o.block_steps_div:
                        add("block", "mdm_ancestral",
                            Ancestral(steps=max(n_blocks, g0 // d), block_size=bs, cache=c), b, L0)
    if "mdm_topk_confidence" in S:
        for b in step_batches:
            for s in steps0:
                add("steps", "mdm_topk_confidence", TopKConfidence(steps=s), b, L0)
    if "mdm_remask" in S:
        for b in step_batches:
            for s in steps0:
                add("steps", "mdm_remask", ReMDM(steps=s), b, L0)
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
            for b in sorted({1, max(o.batches)}):
                for c in caches(bs):
                    add("block", "mdm_threshold", Threshold(tau=o.tau, block_size=bs, cache=c), b, L0)
    return list(pts.values())


def _caches(o, gen: int, block: int) -> list[str]:
    """``none`` and, where the blocks tile the generated tokens, the approximate block caches
    (``--caches``; samplers/mdm.py)."""
    return ["none"] + ([c for c in getattr(o, "caches", ()) if c != "none"] if gen % block == 0 else [])
