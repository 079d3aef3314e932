"""Open a finished (or running) training run: its config, data, model and latest weights.

``load_run(run_dir, weights="ema") -> LoadedRun`` is what every command that reads a
trained model uses (``sandbox.sample``, ``sandbox.evaluate``, the judge of
``sandbox.quality``). It rebuilds everything from the run folder alone:

- ``<run>/config.yaml`` (the composed, resolved config the trainer wrote) is the only
  description of the run; nothing is taken from the current command line.
- data, tokenizer, model and objective come from the same ``sandbox.train`` builders the
  trainer used (``build_data``, ``build_model``, ``build_objective``), so a run reloads
  exactly as it was trained. Prepared data is cached, so this is cheap after the first
  time. The data cache is ``$SANDBOX_CACHE`` when set, else the run's own ``cache_dir``.
- the newest readable Orbax checkpoint is restored into an *abstract* train state
  (``jax.eval_shape`` of ``init_state``): nothing but the restored arrays is allocated.
  The saved ``shapes.json`` is checked first, so a config edited after training fails with
  one line naming the first differing parameter.
- ``weights="ema"`` (default, what evaluation reads) or ``"raw"`` (the optimizer's
  parameters).

Every problem with the folder (missing, not a run, never checkpointed) is a one-line
:class:`~sandbox.errors.UserError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import jax
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from sandbox.checkpoint import restore_run
from sandbox.errors import UserError
from sandbox.flops import train_flops_per_token
from sandbox.optim import make_optimizer
from sandbox.train import build_data, build_model, build_objective, init_state, resolve_steps, split_model

WEIGHTS = ("ema", "raw")


@dataclass
class LoadedRun:
    """A trained run, ready to sample from or score with.

    ``model`` is the backbone with the restored weights merged in; ``graphdef`` and
    ``params`` are its split form for jitted pure functions (``nnx.merge(graphdef, params)``).
    """

    dir: Path
    cfg: DictConfig
    data: object            # sandbox.data.Prepared
    tokenizer: object       # sandbox.data.Tokenizer
    model: nnx.Module
    graphdef: object
    params: object          # nnx.State of the chosen weights
    objective: object       # bound objective (sandbox.objectives.*)
    step: int
    weights: str

    @property
    def seq_len(self) -> int:
        return int(self.cfg.train.seq_len)

    @property
    def train_split(self) -> str:
        return str(self.cfg.train.get("train_split", "train"))

    def describe(self) -> dict:
        """What a result row records about the model it came from."""
        return {"run": str(self.dir), "step": self.step, "weights": self.weights,
                "objective": self.objective.name, "model": str(self.cfg.model.get("name", "?")),
                "tokenizer": self.tokenizer.name, "data": self.data.manifest.get("corpus")}


def read_config(run_dir) -> tuple[Path, DictConfig]:
    """(path, config) of a run folder; UserError when it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run_dir={run_dir}: no such folder; pass a run folder written by "
                        "python -m sandbox.train (its hydra.run.dir)")
    if not (path / "config.yaml").is_file():
        raise UserError(f"run_dir={run_dir}: no config.yaml, so not a run folder written by "
                        "python -m sandbox.train")
    try:
        cfg = OmegaConf.load(path / "config.yaml")
    except Exception as e:
        raise UserError(f"{path / 'config.yaml'}: unreadable ({type(e).__name__}); "
                        "the run folder is damaged") from None
    return path, cfg


def has_checkpoint(run_dir) -> bool:
    ck = Path(run_dir) / "checkpoints"
    return ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())


def load_run(run_dir, weights: str = "ema") -> LoadedRun:
    """Rebuild the run in ``run_dir`` and restore its newest checkpoint (see module doc)."""
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights!r}: choose ema or raw")
    path, cfg = read_config(run_dir)
    if not has_checkpoint(path):
        raise UserError(f"run_dir={run_dir}: no checkpoint yet; train it first "
                        f"(python -m sandbox.train ... hydra.run.dir={run_dir})")
    cfg.cache_dir = os.environ.get("SANDBOX_CACHE", cfg.get("cache_dir", ".cache/sandbox"))
    cfg.train.progress = False
    data, tokenizer = build_data(cfg)
    model = build_model(cfg, tokenizer, int(cfg.get("seed", 0)))
    objective = build_objective(cfg, model, tokenizer)
    graphdef, params = split_model(model)
    # The optimizer only gives the state its structure; its schedule length is irrelevant.
    steps = resolve_steps(cfg, train_flops_per_token(model, int(cfg.train.seq_len), objective))
    tx, _ = make_optimizer(cfg.optim, steps)
    abstract = jax.eval_shape(lambda p: init_state(p, tx), params)
    state, step = restore_run(path, abstract)
    if state is None:
        raise UserError(f"run_dir={run_dir}: no checkpoint yet; train it first")
    chosen = state["ema"] if weights == "ema" else state["params"]
    return LoadedRun(dir=path, cfg=cfg, data=data, tokenizer=tokenizer,
                     model=nnx.merge(graphdef, chosen), graphdef=graphdef, params=chosen,
                     objective=objective, step=int(step), weights=weights)
