"""Orbax checkpoints of the whole train state, atomic, with shape checks on restore.

The train state (params, EMA params, optimizer state, step) is flattened to a dict of
arrays keyed by leaf index; the leaf paths and shapes live in the run's ``shapes.json``.
This keeps Orbax away from NNX / optax container types, and lets a restore compare the
saved shapes with the model being built and fail with one clear line when they differ.

Atomicity (verified in orbax-checkpoint 0.12.8, ``_src/path/atomicity.py``): each step is
written into ``<step>.orbax-checkpoint-tmp/``, a ``commit_success.txt`` is written
last, and the folder is renamed to ``<step>/`` in one ``rename``. A crash mid-save leaves
only the temporary folder, which no listing counts and the next run of the trainer deletes
before it starts; the previous step stays usable. The newest two steps are
kept. If the newest step still cannot be read (a damaged disk, a file truncated after
the fact), restore warns, moves it to ``checkpoints-unreadable/`` and falls back to the
one before, so the run continues from there and saves that step anew.

Meshes: arrays are saved with their shardings (every process writes its own shards) and
restored onto the shardings of the *target* state, so a checkpoint saved on one mesh or
number of processes restores onto another; a target without shardings (an abstract
state from ``jax.eval_shape``, as ``sandbox.core.runs`` builds) restores onto one local device.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from sandbox.core.errors import UserError
from sandbox.core.mesh import barrier, is_main_process, local_device, process_count

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's unfinished step folders (some versions add -<time>)


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


def restore_run(run_dir: Path, target_state, check=None, owner: bool = False):
    """Newest checkpoint of a run folder restored into ``target_state``'s structure, after
    checking the saved ``shapes.json`` against it (one line naming the first difference).
    ``check`` runs between the shape check and the restore. Returns (state, step), or
    (None, None) when the folder holds no checkpoint. ``owner``: the run's own trainer
    (see :class:`Checkpointer`); readers (sampling, evaluation) leave the folder as it is."""
    run_dir = Path(run_dir)
    where = str(run_dir / "checkpoints")
    if not (run_dir / "checkpoints").exists() and process_count() == 1:
        # (with several processes every one opens the manager: whether the folder exists yet
        # depends on how far process 0 got, and the manager's barriers must pair up)
        return None, None
    saved = run_dir / "shapes.json"
    if saved.exists():
        current = json.loads(json.dumps(describe_state(target_state)))  # tuples -> lists, as saved
        check_compatible(json.loads(saved.read_text()), current, where)
    if check is not None:
        check()
    ckpt = Checkpointer(run_dir / "checkpoints", owner=owner)
    try:
        return ckpt.restore(target_state)
    finally:
        ckpt.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


class Checkpointer:
    """The run's Orbax ``CheckpointManager``: synchronous saves, newest ``max_to_keep`` steps.

    Every process must call :meth:`save` and :meth:`restore` (they are collective when
    arrays span processes); only process 0 renames, deletes or moves step folders.

    ``owner=True`` (the run's trainer) deletes unfinished ``*.orbax-checkpoint-tmp*`` folders
    left by a crash, before the manager starts (Orbax's own clean-up runs in the background
    and raced with the next save of the same step: the temporary name is fixed), and moves
    an unreadable step aside. Readers (``owner=False``) change nothing: a run being trained
    may be mid-save."""

    def __init__(self, directory: Path, max_to_keep: int = 2, *, owner: bool = False):
        self.dir = Path(directory).absolute()
        self.owner = owner
        if owner:
            self._remove_unfinished()
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                            create=True)
        self.mngr = ocp.CheckpointManager(self.dir, options=opts)

    def _remove_unfinished(self) -> None:
        if is_main_process() and self.dir.is_dir():
            for p in self.dir.iterdir():
                if TMP_SUFFIX in p.name:
                    shutil.rmtree(p, ignore_errors=True)
        barrier("checkpoint-remove-unfinished")

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

    @staticmethod
    def _abstract(x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:  # abstract target: one local device, whatever mesh saved it
            sharding = jax.sharding.SingleDeviceSharding(local_device())
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    def restore(self, target_state, step: int | None = None):
        """Restore into the structure and shardings of ``target_state``. Returns (state, step)
        or (None, None). Without ``step``: the newest readable step (see module doc)."""
        leaves, treedef = jax.tree.flatten(target_state)
        abstract = {f"{i:05d}": self._abstract(x) for i, x in enumerate(leaves)}
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for i, s in enumerate(candidates):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    flat = self.mngr.restore(s, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # corrupt or partial: fall back to the previous one
                if i + 1 < len(candidates):
                    moved = f"; moved to {self._set_aside(s)}" if self.owner else ""
                    msg = (f"checkpoint {self.dir}/{s} unreadable ({type(e).__name__}: {_first_line(e)})"
                           f"{moved}; falling back to step {candidates[i + 1]}")
                    if is_main_process():
                        print(f"warning: {msg}", file=sys.stderr)
                    continue
                raise UserError(f"{self.dir}/{s}: checkpoint unreadable ({type(e).__name__}: "
                                f"{_first_line(e)}); delete it or use a new hydra.run.dir") from e
            return jax.tree.unflatten(treedef, [flat[f"{j:05d}"] for j in range(len(leaves))]), s
        return None, None

    def _set_aside(self, step: int) -> Path:
        """Move an unreadable step out of the manager's folder (process 0), so the run can save
        that step again; the files are kept for inspection."""
        dest = self.dir.parent / f"{self.dir.name}-unreadable" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if is_main_process():
            dest.parent.mkdir(parents=True, exist_ok=True)
            (self.dir / str(step)).rename(dest)
        barrier(f"checkpoint-set-aside-{step}")
        self.mngr.reload()
        return dest

    def close(self):
        self.mngr.close()
