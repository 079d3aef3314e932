"""Checkpoint save and restore time of a whole train state (``bench train --checkpoint``).

The state is the trainer's (``sandbox.core.build``: params, EMA weights, AdamW moments,
step, placed on the config's mesh layout) and it is saved and restored with the trainer's
``sandbox.core.checkpoint.Checkpointer`` (synchronous Orbax save, then a restore onto the
same shardings), in a temporary folder that is removed afterwards. Every float array is
filled with noise first, keeping its placement: a fresh state's zero moments would
compress to nothing on disk and flatter the figure. The restored state must equal the
saved one.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from sandbox.bench.results import loadavg
from sandbox.bench.train_step import build_point
from sandbox.core.errors import UserError
from sandbox.core.mesh import device_info


def _noisy(state, layout):
    """``state`` with noise added to every float array, on the same shardings."""
    noisy = lambda st: jax.tree.map(  # noqa: E731
        lambda x: x + jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating) else x, st)
    shardings = layout.shardings(state)
    return jax.block_until_ready(jax.jit(noisy, in_shardings=(shardings,), out_shardings=shardings)(state))


def bench_checkpoint(model_name: str, objective_name: str = "ar", repeats: int = 3, *, overrides=(),
                     mesh: str | None = None, root: str | Path | None = None, seed: int = 0) -> dict:
    """Seconds to save and to restore the whole train state of one model, median of
    ``repeats``, in a temporary folder under ``root``."""
    from sandbox.core.checkpoint import Checkpointer

    if repeats < 1:
        raise UserError(f"--ckpt-repeats {repeats} must be at least 1")
    b = build_point(model_name, objective_name, mesh=mesh, overrides=overrides, seed=seed)
    layout, n_params, model_label = b.layout, b.model.n_params(non_embedding=False), str(b.cfg.model.name)
    state = _noisy(b.init_state(), layout)
    del b
    leaves = jax.tree.leaves(state)
    nbytes = sum(int(x.nbytes) for x in leaves)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=root))
    saves, restores = [], []
    try:
        ck = Checkpointer(tmp / "checkpoints")
        for i in range(repeats):
            t0 = time.perf_counter()
            ck.save(i + 1, state)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            restored, _ = ck.restore(state, step=i + 1)
            jax.block_until_ready(restored)
            restores.append(time.perf_counter() - t0)
        ck.close()
        after = jax.tree.leaves(restored)
        same = all(bool(jnp.array_equal(a, b)) for a, b in zip(leaves, after, strict=True))
        disk = sum(f.stat().st_size for f in (tmp / "checkpoints" / str(repeats)).rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not same:
        raise RuntimeError(f"{model_name}: the restored state differs from the saved one")
    dev = device_info()
    return {"kind": "checkpoint", "model": model_label, "objective": objective_name,
            "mesh": layout.name, "mesh_shape": dict(layout.mesh.shape), "devices": dev["devices"],
            "params": n_params, "state_bytes": nbytes, "disk_bytes": disk,
            "save_s": statistics.median(saves), "restore_s": statistics.median(restores),
            "save_s_samples": [round(t, 4) for t in saves],
            "restore_s_samples": [round(t, 4) for t in restores],
            "load_after": loadavg(), "backend": dev["backend"]}
