"""Orbax checkpoints of the whole train state, atomic, with shape checks on restore.

The train state (params, EMA params, optimizer state, step) is flattened to a dict of
arrays keyed by leaf index; the leaf paths and shapes live in the run's ``shapes.json``.
This keeps Orbax away from NNX / optax container types, and lets a restore compare the
saved shapes with the model being built and fail with one clear line when they differ.

Orbax writes each step into a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoint usable; if the newest checkpoint cannot be read
we fall back to the one before it with a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from sandbox.errors import UserError

log = logging.getLogger(__name__)


def describe_state(state) -> dict:
    """{'path': [shape..., dtype]} for every leaf, in flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(p): [list(np.shape(x)), str(np.asarray(x).dtype)
                                      if not hasattr(x, "dtype") else str(x.dtype)]
            for p, x in leaves}


def check_compatible(saved: dict, current: dict, where: str) -> None:
    """UserError naming the first parameter whose path or shape differs."""
    if saved == current:
        return
    for path, spec in current.items():
        if path not in saved:
            raise UserError(f"{where}: checkpoint has no parameter {path}; it was saved for "
                            "another model: use a new hydra.run.dir or the run's original config")
        if saved[path] != spec:
            raise UserError(f"{where}: checkpoint was saved for another model shape ({path}: saved "
                            f"{saved[path][0]} {saved[path][1]}, now {spec[0]} {spec[1]}); use a new "
                            "hydra.run.dir or the run's original model config")
    extra = next(iter(set(saved) - set(current)))
    raise UserError(f"{where}: checkpoint has parameter {extra} that this model lacks; use a new "
                    "hydra.run.dir or the run's original model config")


def restore_run(run_dir: Path, target_state, check=None):
    """Newest checkpoint of a run folder restored into ``target_state``'s structure, after
    checking the saved ``shapes.json`` against it (one line naming the first difference).
    ``check`` runs between the shape check and the restore. Returns (state, step), or
    (None, None) when the folder holds no checkpoint."""
    run_dir = Path(run_dir)
    where = str(run_dir / "checkpoints")
    if not (run_dir / "checkpoints").exists():
        return None, None
    saved = run_dir / "shapes.json"
    if saved.exists():
        current = json.loads(json.dumps(describe_state(target_state)))  # tuples -> lists, as saved
        check_compatible(json.loads(saved.read_text()), current, where)
    if check is not None:
        check()
    ckpt = Checkpointer(run_dir / "checkpoints")
    try:
        return ckpt.restore(target_state)
    finally:
        ckpt.close()


class Checkpointer:
    def __init__(self, directory: Path, max_to_keep: int = 2):
        self.dir = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                            enable_async_checkpointing=False, create=True)
        self.mngr = ocp.CheckpointManager(self.dir, options=opts)

    def steps(self) -> list[int]:
        return sorted(self.mngr.all_steps())

    def latest_step(self) -> int | None:
        s = self.steps()
        return s[-1] if s else None

    def save(self, step: int, state) -> None:
        leaves = jax.tree.leaves(state)
        self.mngr.save(int(step), args=ocp.args.StandardSave({f"{i:05d}": x for i, x in enumerate(leaves)}),
                       force=True)
        self.mngr.wait_until_finished()

    def restore(self, target_state, step: int | None = None):
        """Restore into the structure of ``target_state``. Returns (state, step) or (None, None)."""
        leaves, treedef = jax.tree.flatten(target_state)
        abstract = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                     sharding=getattr(x, "sharding", None))
                    for i, x in enumerate(leaves)}
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for i, s in enumerate(candidates):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    flat = self.mngr.restore(s, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # corrupt or partial: fall back to the previous one
                if i + 1 < len(candidates):
                    log.warning("checkpoint %s/%s unreadable (%s); falling back to %s",
                                self.dir, s, type(e).__name__, candidates[i + 1])
                    print(f"warning: checkpoint {self.dir}/{s} unreadable ({type(e).__name__}); "
                          f"falling back to step {candidates[i + 1]}")
                    continue
                first = (str(e).splitlines() or [""])[0][:200]
                raise UserError(f"{self.dir}/{s}: checkpoint unreadable ({type(e).__name__}: {first}); "
                                "delete it or use a new hydra.run.dir") from e
            return jax.tree.unflatten(treedef, [flat[f"{j:05d}"] for j in range(len(leaves))]), s
        return None, None

    def close(self):
        self.mngr.close()
