"""Generation from a trained run: load it, build and check a sampler, generate, write samples.

The library behind ``python -m sandbox.sample`` and the evaluations that sample
(``eval=quality``, ``eval=edits``):

- **Everything is checked before anything is compiled**: the run folder, the sampler name,
  the sampler/objective pairing (the objective's ``sampler_family``), steps, tau and a
  prompt longer than the output (``Sampler.check``) each fail with one line.
- **No sampler given**: the objective's ``default_sampler`` (``conf/sampler/<name>.yaml``),
  adapted to the run by the sampler's ``for_objective`` when it has one (BD3LM: the run's
  block size); its ``steps`` is lowered to the number of generated tokens when the output is
  shorter (an explicitly chosen sampler is never adjusted).
- **One compiled function**: every batch has ``batch_size`` rows (the last one is cut after
  generation, not recompiled); batch ``i`` uses key ``fold_in(PRNGKey(seed), i)``, so a
  sample depends only on (run step, sampler settings, seed, batch size, its index).
- **Files are written whole or not at all** (temp file + rename). The default name is
  ``<sampler>-<hash>-seed<seed>.jsonl`` where the hash covers the sampler settings,
  length, prompt, number of samples, weights and checkpoint step, so different settings
  never overwrite each other and the same command rewrites the same file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from sandbox.core.cli import CONF_DIR, instantiate, require_int
from sandbox.core.errors import UserError
from sandbox.core.mesh import backend, local_device
from sandbox.core.runfiles import atomic_write_text
from sandbox.core.runs import LoadedRun, load_run
from sandbox.samplers import Sampler, compile_sampler


@dataclass
class Setup:
    """A loaded run with a checked sampler: everything needed to generate."""

    run: LoadedRun
    sampler: Sampler
    length: int
    prompt: str | None
    prompt_ids: np.ndarray   # [P] int32 (P = 0: unconditional)


@dataclass
class Generation:
    tokens: np.ndarray       # [N, length] int32
    nfe: np.ndarray          # [N] model calls of each sample's batch
    compile_s: float
    generate_s: float        # all batches, compile excluded
    batch_size: int
    batch_s: list[float]


# --- building and checking ----------------------------------------------------------------------
def sampler_node(node, default: str | None, objective: str = "?"):
    """(sampler config, chosen_by_default) for ``sampler=<node>`` or the named default."""
    if node is not None:
        return node, False
    path = Path(CONF_DIR) / "sampler" / f"{default}.yaml"
    if default is None or not path.is_file():
        raise UserError(f"no default sampler for objective={objective}; name one with sampler=<name> "
                        "(see conf/sampler/)")
    return OmegaConf.load(path), True


def resolve_length(length, run: LoadedRun) -> int:
    if length is None:
        return run.seq_len
    n = require_int({"length": length}, "length", "length", minimum=1)
    if n > run.model.max_len:
        raise UserError(f"length={n} exceeds the run's model.max_len={run.model.max_len}; lower length")
    return n


def encode_prompt(prompt, tokenizer) -> tuple[str | None, np.ndarray]:
    if prompt is None or str(prompt) == "":
        return None, np.zeros((0,), np.int32)
    text = str(prompt)
    return text, np.asarray(tokenizer.encode(text), dtype=np.int32)


def setup(cfg, *, prompt=None) -> Setup:
    """Load the run and build + check the sampler. Raises UserError on any bad input."""
    if OmegaConf.is_missing(cfg, "run_dir") or cfg.run_dir is None:
        raise UserError("run_dir: required; pass the run folder to read (run_dir=runs/<run>)")
    for key in ("num_samples", "batch_size"):
        if key in cfg:
            require_int(cfg, key, key, minimum=1)
    require_int(cfg, "seed", "seed", minimum=0)
    run = load_run(cfg.run_dir, weights=str(cfg.get("weights", "ema")))
    node, auto = sampler_node(cfg.get("sampler"), run.objective.default_sampler, run.objective.name)
    length = resolve_length(cfg.get("length"), run)
    prompt, prompt_ids = encode_prompt(prompt, run.tokenizer)
    sampler = instantiate(node, "sampler").bind(run.tokenizer)
    gen = length - len(prompt_ids)
    if auto and getattr(sampler, "uses_steps", False) and 0 < gen < sampler.steps:
        sampler = sampler.replace(steps=gen)
    if auto and hasattr(sampler, "for_objective"):  # e.g. bd3lm: the checkpoint's block size
        sampler = sampler.for_objective(run.objective)
    sampler = sampler.for_checkpoint(run.objective)  # what training fixed (the prompt cache of prompt=self)
    sampler.check(family=run.objective.sampler_family, objective=run.objective.name, length=length,
                  prompt_len=len(prompt_ids))
    if length > run.seq_len:
        print(f"note: length={length} is longer than the run's train.seq_len={run.seq_len}")
    return Setup(run, sampler, length, prompt, prompt_ids)


# --- generating -------------------------------------------------------------------------------
def generate(s: Setup, *, num_samples: int, batch_size: int, seed: int, progress: bool = True,
             desc: str | None = None) -> Generation:
    """``num_samples`` samples [N, length] from one compiled function (module doc)."""
    b = min(batch_size, num_samples)
    n_batches = -(-num_samples // b)
    fn = compile_sampler(s.sampler, s.run.graphdef, s.length)
    prompt = jnp.asarray(np.broadcast_to(s.prompt_ids, (b, len(s.prompt_ids))))
    base = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    compiled = fn.lower(s.run.params, base, prompt).compile()
    compile_s = time.perf_counter() - t0
    outs, nfes, batch_s = [], [], []
    with tqdm(total=num_samples, unit="sample", disable=not progress, dynamic_ncols=True,
              desc=desc or s.sampler.name, mininterval=1.0) as bar:
        for i in range(n_batches):
            t0 = time.perf_counter()
            tokens, nfe = jax.block_until_ready(compiled(s.run.params, jax.random.fold_in(base, i), prompt))
            batch_s.append(time.perf_counter() - t0)
            outs.append(np.asarray(tokens))
            nfes.append(np.full(b, int(nfe)))
            bar.update(min(b, num_samples - i * b))
    return Generation(tokens=np.concatenate(outs)[:num_samples].astype(np.int32),
                      nfe=np.concatenate(nfes)[:num_samples], compile_s=compile_s,
                      generate_s=float(sum(batch_s)), batch_size=b, batch_s=batch_s)


def settings_hash(s: Setup, *, num_samples: int) -> str:
    blob = json.dumps({"settings": s.sampler.settings(), "length": s.length, "prompt": s.prompt,
                       "num_samples": num_samples, "weights": s.run.weights, "step": s.run.step},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def default_out(s: Setup, *, num_samples: int, seed: int) -> Path:
    return (s.run.dir / "samples"
            / f"{s.sampler.name}-{settings_hash(s, num_samples=num_samples)}-seed{seed}.jsonl")


def records(s: Setup, g: Generation, *, seed: int) -> list[dict]:
    base = {"sampler": s.sampler.name, "settings": s.sampler.settings(), "precision": s.sampler.precision,
            "dtype": str(s.run.model.dtype), "seed": seed, "length": s.length, "prompt": s.prompt,
            "prompt_tokens": s.prompt_ids.tolist(), "step": s.run.step, "weights": s.run.weights,
            "run": str(s.run.dir)}
    return [{"index": i, "text": s.run.tokenizer.decode(t), "tokens": t.tolist(), "nfe": int(n), **base}
            for i, (t, n) in enumerate(zip(g.tokens, g.nfe))]


def timing(s: Setup, g: Generation) -> dict:
    n = len(g.tokens)
    gen_tokens = n * (s.length - len(s.prompt_ids))
    return {"num_samples": n, "batch_size": g.batch_size, "batches": len(g.batch_s),
            "compile_s": g.compile_s, "generate_s": g.generate_s,
            "batch_s_median": float(np.median(g.batch_s)),
            "latency_s_per_sample": g.generate_s / n, "samples_per_s": n / g.generate_s,
            "generated_tokens_per_s": gen_tokens / g.generate_s, "nfe_mean": float(np.mean(g.nfe)),
            "backend": backend(), "device": str(local_device())}


def write_samples(path: Path, recs: list[dict], meta: dict) -> None:
    """Meta first, then the JSONL, each by rename: a JSONL that exists is complete."""
    path = Path(path)
    atomic_write_text(path.with_name(path.name.removesuffix(".jsonl") + ".meta.json"),
                      json.dumps(meta, indent=1) + "\n")
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))
