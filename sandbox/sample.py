"""Sample from a trained run: ``python -m sandbox.sample run_dir=<run> [sampler=<name>] ...``.

Loads the run's ``config.yaml`` and newest checkpoint (EMA weights by default), builds the
sampler from ``conf/sampler/`` (none named: the objective's ``default_sampler``) and
writes ``num_samples`` samples as JSON lines into ``<run_dir>/samples/`` (config:
``conf/sample.yaml``). One line per sample::

    {"index", "text", "tokens", "nfe", "sampler", "settings", "precision", "dtype", "seed",
     "length", "prompt", "prompt_tokens", "step", "weights", "run"}

plus ``<name>.meta.json`` with the timing: compile time (ahead-of-time ``lower().compile()``,
reported apart), generation time, samples/s and generated tokens/s. The work is done by
``sandbox.core.generate`` (checks, one compiled function, atomic files); Hydra writes
nothing of its own (``hydra.run.dir: .``, no ``.hydra/``): the outputs belong to the run.
"""

from __future__ import annotations

from pathlib import Path

from sandbox.core.cli import sampling_entry
from sandbox.core.generate import default_out, generate, records, setup, timing, write_samples


def task(cfg) -> Path:
    s = setup(cfg, prompt=cfg.get("prompt"))
    num_samples, seed = int(cfg.num_samples), int(cfg.seed)
    g = generate(s, num_samples=num_samples, batch_size=int(cfg.batch_size), seed=seed,
                 progress=bool(cfg.get("progress", True)))
    out = Path(cfg.out) if cfg.get("out") else default_out(s, num_samples=num_samples, seed=seed)
    meta = {**s.run.describe(), "sampler": s.sampler.name, "settings": s.sampler.settings(),
            "length": s.length, "prompt": s.prompt, "seed": seed, **timing(s, g)}
    write_samples(out, records(s, g, seed=seed), meta)
    print(f"wrote {num_samples} samples to {out} (compile {g.compile_s:.1f} s, "
          f"{meta['samples_per_s']:.2f} samples/s, NFE {meta['nfe_mean']:.0f})")
    return out


def main() -> None:
    sampling_entry(task, config_name="sample")


if __name__ == "__main__":
    main()
