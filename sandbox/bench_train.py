"""Training-speed benchmark: tokens/s, step time and model FLOP utilisation (MFU).

``python -m sandbox.bench train`` runs a matrix of models x objectives (x attention
kernels) at one batch shape and prints one row per point; the functions here are the
library behind it.

Protocol (DESIGN.md, "Speed protocol"):
- The step timed is the trainer's own (``sandbox.train.make_train_step``: a pure
  ``jax.jit`` over the split NNX state, AdamW + EMA, state donated), built from the
  composed Hydra config exactly as ``sandbox.train`` builds it, on random token batches
  (speed does not depend on the text, so no corpus is prepared).
- Compilation is timed apart (ahead-of-time ``lower().compile()``), then ``warmup``
  untimed steps, then the median of the timed steps, each ended by
  ``jax.block_until_ready``. Per-step blocking exposes any host-side overhead instead of
  hiding it behind asynchronous dispatch: the conservative figure.
- MFU = achieved model FLOP/s (median step) / the matmul peak measured in the same
  process on the same device and dtype. The peak is *interleaved* with the timed steps
  (a few timed ``[n, n] @ [n, n]`` calls after every step) and is the best of those
  calls: a peak measured once, a minute before, on a 2-core machine shared with other
  jobs was off by 2x. Under contention the median step is slowed and the best matmul
  less so, so ``mfu`` errs low; ``mfu_best`` (fastest step / the same peak) estimates
  the uncontended figure. Both lists of samples are kept in the row.
  Model FLOPs are ``sandbox.flops.train_flops_per_token`` (6N plus the full L x L
  attention term, whatever the mask), so MFU compares across attention kernels: a kernel
  that skips the masked half shows up as a higher MFU. MFU can pass 100% where the
  model's matmul shapes run faster than the square reference matmul.
- Each row records the 1-minute load average before and after it: on a shared machine
  a number measured under load is not a property of the code.

Meshes (``--mesh single,dp,fsdp``): the step is the trainer's sharded step on
``sandbox.mesh``'s layout, batches split over the devices. ``--cpu-devices 8`` fakes 8 CPU
devices (they share the machine's cores, so on a CPU this measures the overhead of
sharding, not a speed-up). ``--checkpoint`` times saving and restoring the whole train
state (``sandbox.checkpoint.Checkpointer``, as the trainer does) instead of steps.

``bench_nnx_vs_jit`` times the same step written four ways (the sandbox's jax.jit over
split state; idiomatic ``nnx.jit`` + ``nnx.Optimizer``; the latter with
``nnx.cached_partial``; ``nnx.jit(graph=False)`` tree mode), round-robin so that every
variant sees the same machine load, reports the ratio to the jax.jit step as the median
of per-round paired ratios, and checks they compute the same losses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sandbox import flops as flops_lib
from sandbox.cli import CONF_DIR, check_overrides
from sandbox.data.tokenizers import ByteTokenizer
from sandbox.errors import UserError
from sandbox.mesh import build_layout
from sandbox.optim import make_optimizer
from sandbox.runinfo import atomic_write_text, env_info, git_info
from sandbox.train import (
    build_model,
    build_objective,
    init_sharded_state,
    init_state,
    make_train_step,
    split_model,
)


# --- measurement helpers --------------------------------------------------------------------
def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _peak_flops_check(gflops: float) -> float:
    if not (gflops > 0 and math.isfinite(gflops)):
        raise RuntimeError(f"matmul peak measured as {gflops} GFLOP/s")
    return gflops


def matmul_timer(n: int = 2048, dtype: str = "float32", warmup: int = 2):
    """A compiled, warmed-up ``[n, n] @ [n, n]``: returns ``time_one() -> seconds`` and its FLOPs."""
    dt = jnp.dtype(dtype)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(jnp.matmul)
    for _ in range(max(1, warmup)):
        f(a, b).block_until_ready()

    def time_one() -> float:
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        return time.perf_counter() - t0

    return time_one, 2.0 * n**3


def measure_matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 10, warmup: int = 2) -> float:
    """Achieved GFLOP/s of one jitted ``[n, n] @ [n, n]`` matmul (median of ``repeats``).

    The denominator of MFU: what this device reaches on a large square matmul in the
    model's compute dtype, measured in the same process (so under the same thread
    settings and XLA flags) as the training steps it is compared with."""
    time_one, flops = matmul_timer(n, dtype, warmup)
    times = [time_one() for _ in range(max(1, repeats))]
    return _peak_flops_check(flops / statistics.median(times) / 1e9)


def compose_config(model_name: str, objective_name: str, overrides=(), attention: str | None = None):
    """The Hydra config ``sandbox.train`` would run with ``model=<name> objective=<name>``.

    Bad overrides (unknown model name, unknown key) raise a one-line UserError."""
    ov = [f"model={model_name}", f"objective={objective_name}", *overrides]
    if attention is not None:
        ov.append(f"model.attention={attention}")
    check_overrides(ov, "config")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=ov)
    finally:
        GlobalHydra.instance().clear()


def build(cfg, seq_len: int, seed: int = 0):
    """(model, objective, tokenizer) for ``cfg`` with the byte tokenizer (vocab 260)."""
    tokenizer = ByteTokenizer()
    model = build_model(cfg, tokenizer, seed)
    if seq_len > model.max_len:
        raise UserError(f"--seq {seq_len} exceeds model.max_len={model.max_len} of model "
                        f"'{cfg.model.name}'; lower --seq or raise model.max_len")
    return model, build_objective(cfg, model, tokenizer), tokenizer


def check_buildable(cfg, seq_len: int) -> None:
    """Build the model abstractly (``nnx.eval_shape``: no arrays) and the objective, so a bad
    config fails in one line before anything is measured or written."""
    tokenizer = ByteTokenizer()
    model = nnx.eval_shape(lambda: build_model(cfg, tokenizer, 0))
    if seq_len > model.max_len:
        raise UserError(f"--seq {seq_len} exceeds model.max_len={model.max_len} of model "
                        f"'{cfg.model.name}'; lower --seq or raise model.max_len")
    build_objective(cfg, model, tokenizer)


def random_inputs(n: int, batch_size: int, seq_len: int, n_text: int, seed: int = 0):
    """``n`` (tokens int32[B, L], key) pairs on the default device, made before timing."""
    rng = np.random.default_rng(seed)
    base = jax.random.PRNGKey(seed)
    out = [(jnp.asarray(rng.integers(0, n_text, (batch_size, seq_len), dtype=np.int32)),
            jax.random.fold_in(base, i + 1)) for i in range(n)]
    return jax.block_until_ready(out)


def _check_shape(batch_size, seq_len, steps):
    if batch_size < 1:
        raise UserError(f"--batch {batch_size} must be at least 1")
    if seq_len < 2:
        raise UserError(f"--seq {seq_len} must be at least 2")
    if steps < 1:
        raise UserError(f"--steps {steps} must be at least 1")


def _summary(times: list[float]) -> dict:
    return {"step_ms": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
            "step_ms_max": 1e3 * max(times), "timed_steps": len(times)}


# --- one matrix point -------------------------------------------------------------------------
def bench_train(model_name: str, objective_name: str, batch_size: int = 32, seq_len: int = 256,
                steps: int = 10, attention: str | None = None, *, overrides=(), warmup: int = 1,
                max_seconds: float | None = None, min_steps: int = 3, peak_gflops: float | None = None,
                peak_n: int = 2048, peak_repeats: int = 2, seed: int = 0, mesh: str | None = None) -> dict:
    """Time ``sandbox.train``'s train step for one model/objective at ``[batch_size, seq_len]``.

    ``mesh`` (``single``, ``dp``, ``fsdp``): the trainer's sharded step on that layout, with
    the state placed and the batches split over the devices (None: the plain jitted step).

    Runs up to ``steps`` timed steps; with ``max_seconds``, stops early once at least
    ``min_steps`` were timed and their total passes ``max_seconds`` (so a slow device runs
    few steps of a big model and a fast one many). ``peak_gflops``: the matmul peak to
    divide by; when None it is measured here, in the model's dtype, interleaved with the
    timed steps (``peak_repeats`` ``peak_n``-sized matmuls after each step, best of them).

    Returns a row: model, objective, attention (the resolved kernel), dtype, batch, seq,
    params (non-embedding), flops_per_token, compile_s, step_ms (median; min / max too), tokens_per_s,
    gflops (achieved), peak_gflops, mfu (fraction), mfu_best (fastest step), loss (last
    step), load averages, and the raw step and peak samples.
    """
    _check_shape(batch_size, seq_len, steps)
    load0 = _loadavg()
    cfg = compose_config(model_name, objective_name, [*overrides, *([f"mesh={mesh}"] if mesh else [])],
                         attention)
    layout = build_layout(cfg.mesh) if mesh else None
    if layout is not None:
        layout.check_batch(batch_size, "--batch")
    model, objective, tokenizer = build(cfg, seq_len, seed)
    fpt = flops_lib.train_flops_per_token(model, seq_len, objective)
    dtype = str(jnp.dtype(model.dtype))
    peak_timer = matmul_timer(peak_n, dtype) if peak_gflops is None else None
    peak_times = [peak_timer[0]() for _ in range(peak_repeats)] if peak_timer else []
    tx, _ = make_optimizer(cfg.optim, int(cfg.train.steps))
    graphdef, params = split_model(model)
    state = init_state(params, tx) if layout is None else init_sharded_state(params, tx, layout)
    impl = str(getattr(model, "cfg", {}).get("impl") or _attention_of(cfg))
    n_params = model.n_params(non_embedding=True)
    del model, params  # the state owns the arrays now (and donates them)
    train_step = make_train_step(graphdef, objective, tx, float(cfg.train.ema_decay), layout, state)
    inputs = random_inputs(warmup + steps, batch_size, seq_len, tokenizer.n_text, seed)
    if layout is not None:
        inputs = jax.block_until_ready([(layout.full_batch(b), layout.replicate(k)) for b, k in inputs])

    t0 = time.perf_counter()
    step = train_step.lower(state, *inputs[0]).compile()
    compile_s = time.perf_counter() - t0
    for batch, key in inputs[:warmup]:
        state, m = step(state, batch, key)
        jax.block_until_ready((state, m))
    times = []
    for batch, key in inputs[warmup:]:
        t0 = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
        if peak_timer:
            peak_times += [peak_timer[0]() for _ in range(peak_repeats)]
        if max_seconds is not None and len(times) >= min_steps and sum(times) >= max_seconds:
            break
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise FloatingPointError(f"{model_name}/{objective_name}: loss {loss} after {warmup + len(times)} "
                                 "steps")
    row = {"kind": "train", "model": str(cfg.model.name), "objective": objective.name,
           "attention": impl, "dtype": dtype, "batch": batch_size, "seq": seq_len,
           "mesh": mesh, "mesh_shape": dict(layout.mesh.shape) if layout else None,
           "devices": jax.device_count(),
           "overrides": list(overrides), "params": n_params, "flops_per_token": fpt,
           "compile_s": compile_s, **_summary(times)}
    row["tokens_per_s"] = batch_size * seq_len / (row["step_ms"] / 1e3)
    row["gflops"] = fpt * row["tokens_per_s"] / 1e9
    if peak_timer:
        probes = [peak_timer[1] / t / 1e9 for t in peak_times]
        peak_gflops = _peak_flops_check(max(probes))
        row.update(peak_n=peak_n, peak_samples=len(probes), peak_gflops_median=statistics.median(probes),
                   peak_gflops_samples=[round(g, 2) for g in probes])
    row["peak_gflops"] = peak_gflops
    row["mfu"] = row["gflops"] / peak_gflops
    row["mfu_best"] = fpt * batch_size * seq_len / (row["step_ms_min"] / 1e3) / 1e9 / peak_gflops
    row["step_ms_samples"] = [round(1e3 * t, 2) for t in times]
    row.update(loss=loss, warmup_steps=warmup, load_before=load0, load_after=_loadavg(),
               backend=jax.default_backend(), device=jax.devices()[0].device_kind)
    return row


def bench_checkpoint(model_name: str, objective_name: str = "ar", repeats: int = 3, *, overrides=(),
                     mesh: str | None = None, root: str | Path | None = None, seed: int = 0) -> dict:
    """Seconds to save and to restore the whole train state (params, EMA, AdamW moments, step)
    of one model with the trainer's ``Checkpointer`` (synchronous Orbax save, then a restore
    onto the same shardings), median of ``repeats``, in a temporary folder under ``root``.
    The state's float arrays are filled with noise first, like a trained state's (zeros
    would compress to nothing on disk)."""
    from sandbox.checkpoint import Checkpointer

    if repeats < 1:
        raise UserError(f"--ckpt-repeats {repeats} must be at least 1")
    cfg = compose_config(model_name, objective_name, [*overrides, *([f"mesh={mesh}"] if mesh else [])])
    layout = build_layout(cfg.mesh)
    model, _, _ = build(cfg, 2, seed)
    tx, _ = make_optimizer(cfg.optim, int(cfg.train.steps))
    _, params = split_model(model)
    state = init_sharded_state(params, tx, layout)
    # a trained state's moments are not zeros (which compress to nothing): fill every float
    # array with noise, keeping its placement
    noisy = lambda st: jax.tree.map(  # noqa: E731
        lambda x: x + jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating) else x, st)
    shardings = layout.shardings(state)
    state = jax.block_until_ready(jax.jit(noisy, in_shardings=(shardings,), out_shardings=shardings)(state))
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
    return {"kind": "checkpoint", "model": str(cfg.model.name), "objective": objective_name,
            "mesh": layout.name, "mesh_shape": dict(layout.mesh.shape), "devices": jax.device_count(),
            "params": model.n_params(non_embedding=False), "state_bytes": nbytes, "disk_bytes": disk,
            "save_s": statistics.median(saves), "restore_s": statistics.median(restores),
            "save_s_samples": [round(t, 4) for t in saves],
            "restore_s_samples": [round(t, 4) for t in restores],
            "load_after": _loadavg(), "backend": jax.default_backend()}


def _attention_of(cfg) -> str:
    """The kernel ``attention: auto`` resolves to here (same rule as the model uses)."""
    from sandbox.models.attention import resolve_impl

    return resolve_impl(str(cfg.model.get("attention", "auto")), jnp.dtype(str(cfg.model.get("dtype",
                                                                                               "float32"))))


# --- NNX vs jax.jit ------------------------------------------------------------------------
NNX_VARIANTS = {
    "jit_split": "jax.jit over nnx.split state (sandbox.train)",
    "nnx_jit": "nnx.jit + nnx.Optimizer (graph mode)",
    "nnx_cached": "nnx.jit + nnx.cached_partial",
    "nnx_tree": "nnx.jit(graph=False) tree mode",
}


def _nnx_step(objective, ema_decay: float, graph: bool):
    """The sandbox's train step (loss, grads, AdamW, EMA with warm-up, grad norm), written
    idiomatically in NNX: modules are mutated in place inside ``nnx.jit``."""

    def step(model, optimizer, ema, batch, key):
        def loss_fn(m):
            return objective.loss(m, batch, key)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True, graph=graph)(model)
        optimizer.update(model, grads)
        n = optimizer.step[...].astype(jnp.float32)  # steps taken, after this update
        d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
        new = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, nnx.state(ema, nnx.Param),
                           nnx.state(model, nnx.Param))
        nnx.update(ema, new)
        return {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return nnx.jit(step, donate_argnums=(0, 1, 2), graph=graph)


def _make_variant(name, cfg, objective, tokenizer, tx, seed):
    """A callable (batch, key) -> metrics that advances its own copy of the train state."""
    ema_decay = float(cfg.train.ema_decay)
    model = build_model(cfg, tokenizer, seed)
    if name == "jit_split":
        graphdef, params = split_model(model)
        box = {"state": init_state(params, tx)}
        step = make_train_step(graphdef, objective, tx, ema_decay)

        def run(batch, key):
            box["state"], m = step(box["state"], batch, key)
            return m

        return run
    graph = name != "nnx_tree"
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param, graph=graph)
    ema = nnx.clone(model)
    nnx.update(ema, jax.tree.map(jnp.copy, nnx.state(model)))  # own buffers: all three are donated
    step = _nnx_step(objective, ema_decay, graph)
    if name == "nnx_cached":
        with nnx.set_graph_mode(True), nnx.set_graph_updates(True):
            cached = nnx.cached_partial(step, model, optimizer, ema)
        return cached
    if name not in NNX_VARIANTS:
        raise UserError(f"unknown NNX variant '{name}' (choose from {', '.join(NNX_VARIANTS)})")
    return lambda batch, key: step(model, optimizer, ema, batch, key)


def bench_mesh_pairs(model_name: str, objective_name: str, meshes, batch_size: int = 32, seq_len: int = 256,
                     rounds: int = 5, *, overrides=(), warmup: int = 1, seed: int = 0) -> list[dict]:
    """The trainer's step on each of ``meshes`` (``single`` first), timed round-robin (one step
    of each per round, the order rotated), so that a shared machine's load hits all alike.
    Per mesh: median step, and ``ratio`` = median over rounds of single's step time / this
    mesh's in the same round (tokens/s relative to mesh=single; paired, so a slow round
    cancels out). The losses after the last round must agree (same steps, same data)."""
    meshes = ["single", *[m for m in meshes if m != "single"]]
    _check_shape(batch_size, seq_len, rounds)
    subjects = {}
    for me in meshes:
        cfg = compose_config(model_name, objective_name, [*overrides, f"mesh={me}"])
        layout = build_layout(cfg.mesh)
        layout.check_batch(batch_size, "--batch")
        model, objective, tokenizer = build(cfg, seq_len, seed)
        tx, _ = make_optimizer(cfg.optim, int(cfg.train.steps))
        graphdef, params = split_model(model)
        state = init_sharded_state(params, tx, layout)
        step = make_train_step(graphdef, objective, tx, float(cfg.train.ema_decay), layout, state)
        inputs = random_inputs(warmup + rounds, batch_size, seq_len, tokenizer.n_text, seed)
        inputs = jax.block_until_ready([(layout.full_batch(b), layout.replicate(k)) for b, k in inputs])
        t0 = time.perf_counter()
        compiled = step.lower(state, *inputs[0]).compile()
        subjects[me] = {"layout": layout, "step": compiled, "state": state, "inputs": inputs,
                        "compile_s": time.perf_counter() - t0, "times": []}
    load0 = _loadavg()
    for i in range(warmup + rounds):
        for j in range(len(meshes)):
            sub = subjects[meshes[(i + j) % len(meshes)]]
            t0 = time.perf_counter()
            sub["state"], sub["m"] = sub["step"](sub["state"], *sub["inputs"][i])
            jax.block_until_ready((sub["state"], sub["m"]))
            if i >= warmup:
                sub["times"].append(time.perf_counter() - t0)
    base = subjects["single"]
    rows = []
    for me in meshes:
        sub = subjects[me]
        ratio = statistics.median(b / t for b, t in zip(base["times"], sub["times"], strict=True))
        rows.append({"kind": "mesh_pairs", "model": model_name, "objective": objective_name, "mesh": me,
                     "mesh_shape": dict(sub["layout"].mesh.shape), "devices": jax.device_count(),
                     "batch": batch_size, "seq": seq_len, "compile_s": sub["compile_s"],
                     **_summary(sub["times"]),
                     "tokens_per_s": batch_size * seq_len / statistics.median(sub["times"]),
                     "ratio": ratio, "loss": float(sub["m"]["loss"]), "load_before": load0,
                     "load_after": _loadavg(), "step_ms_samples": [round(1e3 * t, 2) for t in sub["times"]]})
    return rows


def bench_nnx_vs_jit(model_name: str = "tiny", objective_name: str = "ar", batch_size: int = 32,
                     seq_len: int = 256, steps: int = 5, *, variants=tuple(NNX_VARIANTS), overrides=(),
                     attention: str | None = None, warmup: int = 0, seed: int = 0) -> list[dict]:
    """Time the same train step written as each of ``variants`` (see ``NNX_VARIANTS``).

    Each variant's first call (compiling, then running one step) is timed apart; then
    ``warmup`` untimed and ``steps`` timed rounds run round-robin (one step of each
    variant per round, same inputs, the order rotated each round), so load changes on a
    shared machine hit every variant alike.
    Per variant: first_call_s (trace + compile + one step), step_ms (median, blocked),
    dispatch_ms (median time until the call returns, before blocking: the host-side cost
    NNX adds), ratio = median over rounds of step time / ``jit_split``'s in the same
    round (paired, so a slow round cancels out), ratio_min = min / min, and the loss after
    the last step (must agree across variants: they compute the same thing)."""
    _check_shape(batch_size, seq_len, steps)
    variants = list(variants)
    if "jit_split" not in variants:
        variants.insert(0, "jit_split")
    for v in variants:
        if v not in NNX_VARIANTS:
            raise UserError(f"unknown NNX variant '{v}' (choose from {', '.join(NNX_VARIANTS)})")
    load0 = _loadavg()
    cfg = compose_config(model_name, objective_name, overrides, attention)
    _, objective, tokenizer = build(cfg, seq_len, seed)
    tx, _ = make_optimizer(cfg.optim, int(cfg.train.steps))
    inputs = random_inputs(1 + warmup + steps, batch_size, seq_len, tokenizer.n_text, seed)
    runs = {v: _make_variant(v, cfg, objective, tokenizer, tx, seed) for v in variants}
    first, times, dispatch, last = {}, {v: [] for v in variants}, {v: [] for v in variants}, {}
    for v, run in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(run(*inputs[0]))
        first[v] = time.perf_counter() - t0
    for i, (batch, key) in enumerate(inputs[1:]):
        for j in range(len(variants)):  # rotate who goes first: no variant always follows compile/GC
            v = variants[(i + j) % len(variants)]
            run = runs[v]
            t0 = time.perf_counter()
            m = run(batch, key)
            t1 = time.perf_counter()
            jax.block_until_ready(m)
            t2 = time.perf_counter()
            if i >= warmup:
                times[v].append(t2 - t0)
                dispatch[v].append(t1 - t0)
            last[v] = m
    rows = []
    base = times["jit_split"]
    for v in variants:
        loss = float(last[v]["loss"])
        rows.append({"kind": "nnx_vs_jit", "variant": v, "how": NNX_VARIANTS[v],
                     "model": str(cfg.model.name), "objective": objective.name,
                     "attention": _attention_of(cfg), "batch": batch_size, "seq": seq_len,
                     "overrides": list(overrides), "first_call_s": first[v], **_summary(times[v]),
                     "dispatch_ms": 1e3 * statistics.median(dispatch[v]),
                     "ratio": statistics.median(t / b for t, b in zip(times[v], base, strict=True)),
                     "ratio_min": min(times[v]) / min(base), "loss": loss,
                     "load_before": load0, "load_after": _loadavg()})
    return rows


# --- run folder and table ----------------------------------------------------------------------
class Results:
    """``<root>/<kind>-<timestamp>/results.jsonl`` (one JSON row per line, appended as measured)
    plus ``env.json`` and ``git.json``. Created on the first row, so a run that fails its
    argument checks leaves no folder."""

    def __init__(self, root: str | Path = "runs/bench", kind: str = "train", meta: dict | None = None):
        self.dir = Path(root) / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.meta = meta or {}
        self.rows: list[dict] = []
        self._open = False

    @property
    def path(self) -> Path:
        return self.dir / "results.jsonl"

    def _create(self):
        d, i = self.dir, 1
        while d.exists():  # two runs in the same second
            i += 1
            d = self.dir.with_name(f"{self.dir.name}-{i}")
        self.dir = d
        self.dir.mkdir(parents=True)
        atomic_write_text(self.dir / "env.json", json.dumps(env_info(), indent=2) + "\n")
        info, _ = git_info()
        atomic_write_text(self.dir / "git.json", json.dumps(info, indent=2) + "\n")
        self._open = True
        if self.meta:
            self._append({"kind": "meta", **self.meta})

    def _append(self, row: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def add(self, row: dict) -> dict:
        if not self._open:
            self._create()
        self._append(row)
        self.rows.append(row)
        return row


TRAIN_COLUMNS = [("model", "model", "{}"), ("objective", "objective", "{}"), ("attention", "attention", "{}"),
                 ("batch", "batch", "{}"), ("seq", "seq", "{}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
                 ("step ms", "step_ms", "{:,.1f}"), ("compile s", "compile_s", "{:.1f}"),
                 ("GFLOP/s", "gflops", "{:,.1f}"), ("MFU %", "mfu", "{:.1%}"),
                 ("MFU best %", "mfu_best", "{:.1%}"),
                 ("peak GFLOP/s", "peak_gflops", "{:,.1f}")]
NNX_COLUMNS = [("variant", "variant", "{}"), ("how", "how", "{}"), ("step ms", "step_ms", "{:,.1f}"),
               ("dispatch ms", "dispatch_ms", "{:.2f}"), ("first call s", "first_call_s", "{:.1f}"),
               ("vs jit", "ratio", "{:.3f}"), ("min vs min", "ratio_min", "{:.3f}"),
               ("loss", "loss", "{:.5f}")]


PAIR_COLUMNS = [("model", "model", "{}"), ("objective", "objective", "{}"), ("mesh", "mesh", "{}"),
                ("shape", "mesh_shape", "{}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
                ("step ms", "step_ms", "{:,.1f}"), ("vs single", "ratio", "{:.3f}"),
                ("loss", "loss", "{:.5f}")]
CKPT_COLUMNS = [("model", "model", "{}"), ("mesh", "mesh", "{}"), ("devices", "devices", "{}"),
                ("state MB", "state_mb", "{:,.1f}"), ("disk MB", "disk_mb", "{:,.1f}"),
                ("save s", "save_s", "{:.3f}"), ("restore s", "restore_s", "{:.3f}")]


def format_table(rows: list[dict], columns) -> str:
    cells = [[h for h, _, _ in columns]]
    for r in rows:
        cells.append([fmt.format(r[k]).replace("%", "") if k.startswith("mfu") else
                      "-" if r.get(k) is None else fmt.format(r[k]) for _, k, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < 3 or (columns is NNX_COLUMNS and i < 2) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the `train` subcommand of `python -m sandbox.bench` -----------------------------------------
def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _print_mesh_ratios(rows: list[dict]) -> None:
    """tokens/s of each mesh relative to mesh=single at the same point."""
    point = lambda r: (r["model"], r["objective"], r["attention"])  # noqa: E731
    base = {point(r): r["tokens_per_s"] for r in rows if r["mesh"] == "single"}
    lines = [f"  {r['model']}/{r['objective']} mesh={r['mesh']} {r['mesh_shape']}: "
             f"{r['tokens_per_s'] / base[point(r)]:.2f}x mesh=single"
             for r in rows if r["mesh"] != "single" and point(r) in base]
    if lines:
        print(f"\ntokens/s relative to mesh=single ({rows[0]['devices']} {jax.default_backend()} devices):")
        print("\n".join(lines))


def _run_checkpoint(args, meshes) -> dict:
    models = _csv(args.models)
    if not models:
        raise UserError("--models is empty; give e.g. --models tiny,small")
    for m in models:
        for me in meshes:
            compose_config(m, "ar", [*args.override, *([f"mesh={me}"] if me else [])])
    res = Results(args.out, "checkpoint", meta={"argv": sys.argv[1:], "models": models, "mesh": meshes,
                                                "repeats": args.ckpt_repeats, "devices": jax.device_count()})
    rows = []
    for m in models:
        for me in meshes:
            log(f"checkpoint {m}" + (f" mesh={me}" if me else "") + f": {args.ckpt_repeats} save/restore "
                "pairs ...")
            row = bench_checkpoint(m, "ar", args.ckpt_repeats, overrides=args.override, mesh=me,
                                   root=args.out)
            row.update(state_mb=row["state_bytes"] / 2**20, disk_mb=row["disk_bytes"] / 2**20)
            rows.append(res.add(row))
            log(f"  save {row['save_s']:.3f} s, restore {row['restore_s']:.3f} s ({row['state_mb']:,.1f} MB)")
    print(f"\nCheckpoint save / restore of the whole train state ({jax.default_backend()}, median of "
          f"{args.ckpt_repeats}):")
    print(format_table(rows, CKPT_COLUMNS))
    print(f"\nresults: {res.path}")
    return {"dir": str(res.dir), "checkpoint": rows}


def add_arguments(p) -> None:
    p.add_argument("--models", default="tiny,small", help="comma-separated conf/model/ names (tiny,small)")
    p.add_argument("--objectives", default="ar,mdlm", help="comma-separated conf/objective/ names (ar,mdlm)")
    p.add_argument("--attention", default=None,
                   help="comma-separated attention kernels to sweep, e.g. xla,chunked "
                        "(auto|xla|chunked|cudnn; default: each model config's own)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (32)")
    p.add_argument("--seq", type=int, default=256, help="sequence length (256)")
    p.add_argument("--steps", type=int, default=10, help="at most this many timed steps per point (10)")
    p.add_argument("--max-seconds", type=float, default=12.0,
                   help="stop timing a point once its timed steps pass this many seconds, after at "
                        "least 3 steps (12; 0 = always --steps)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling (1)")
    p.add_argument("--nnx-model", default="tiny", help="model of the NNX-vs-jit comparison (tiny)")
    p.add_argument("--nnx-steps", type=int, default=5, help="timed rounds of the NNX-vs-jit comparison (5)")
    p.add_argument("--no-nnx", action="store_true", help="skip the NNX-vs-jit comparison")
    p.add_argument("--peak-n", type=int, default=None,
                   help="matmul size of the peak measurement (2048 on CPU, 8192 on accelerators)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for every point, e.g. -o model.n_layers=2 (repeatable)")
    p.add_argument("--out", default="runs/bench", help="results go to <out>/train-<timestamp>/ (runs/bench)")
    p.add_argument("--quick", action="store_true",
                   help="a fast check: tiny only, batch 8, seq 64, 3 timed steps, small peak matmul")
    p.add_argument("--mesh", default=None,
                   help="comma-separated conf/mesh/ layouts to time the trainer's sharded step on, e.g. "
                        "single,dp,fsdp (default: the plain jitted step)")
    p.add_argument("--mesh-rounds", type=int, default=5,
                   help="with several --mesh: also time them round-robin for this many rounds (5; 0: no)")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="fake this many CPU devices (jax_num_cpu_devices; they share the cores)")
    p.add_argument("--checkpoint", action="store_true",
                   help="time checkpoint save and restore of each model's train state instead of steps")
    p.add_argument("--ckpt-repeats", type=int, default=3, help="save/restore pairs per model (3)")


def run(args) -> dict:
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise UserError(f"--cpu-devices {args.cpu_devices} must be at least 1")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before any device is touched
    meshes = _csv(args.mesh) or [None]
    for m in meshes:
        if m is not None and not (Path(CONF_DIR) / "mesh" / f"{m}.yaml").exists():
            raise UserError(f"--mesh: unknown layout '{m}' (choose from "
                            f"{', '.join(sorted(p.stem for p in (Path(CONF_DIR) / 'mesh').glob('*.yaml')))})")
    if args.checkpoint:
        return _run_checkpoint(args, meshes)
    if args.quick:
        args.models, args.batch, args.seq, args.steps, args.max_seconds = "tiny", 8, 64, 3, 0
        args.nnx_steps, args.peak_n = 3, args.peak_n or 1024
    models, objectives = _csv(args.models), _csv(args.objectives)
    attns = _csv(args.attention) or [None]
    if not models:
        raise UserError("--models is empty; give e.g. --models tiny,small")
    if not objectives:
        raise UserError("--objectives is empty; give e.g. --objectives ar,mdlm")
    from sandbox.models.attention import IMPLS

    for a in attns:
        if a is not None and a not in IMPLS:
            raise UserError(f"--attention: unknown kernel '{a}' (choose from {', '.join(IMPLS)})")
        if a == "cudnn" and jax.default_backend() != "gpu":
            raise UserError(f"--attention cudnn needs a GPU (this backend is {jax.default_backend()}); "
                            "use xla or chunked")
    _check_shape(args.batch, args.seq, args.steps)
    if args.nnx_steps < 1 or args.warmup < 0:
        raise UserError("--nnx-steps must be at least 1 and --warmup at least 0")
    peak_n = args.peak_n or (2048 if jax.default_backend() == "cpu" else 8192)
    if peak_n < 1:
        raise UserError(f"--peak-n {peak_n} must be positive")
    points = [(m, o, a, me) for m in models for o in objectives for a in attns for me in meshes]
    cfgs = {}
    for m, o, a, me in points + ([] if args.no_nnx else [(args.nnx_model, "ar", None, None)]):
        ov = [*args.override, *([f"mesh={me}"] if me else [])]
        cfgs[(m, o, a, me)] = cfg = compose_config(m, o, ov, a)  # every flag checked before any work
        check_buildable(cfg, args.seq)
        if me:
            build_layout(cfg.mesh).check_batch(args.batch, "--batch")
    max_s = args.max_seconds if args.max_seconds and args.max_seconds > 0 else None

    res = Results(args.out, "train", meta={"argv": sys.argv[1:], "models": models, "objectives": objectives,
                                           "attention": attns, "batch": args.batch, "seq": args.seq,
                                           "steps": args.steps, "max_seconds": max_s,
                                           "overrides": args.override, "cpu_count": os.cpu_count(),
                                           "mesh": meshes, "devices": jax.device_count()})
    dev = jax.devices()[0]
    log(f"device: {jax.default_backend()} {dev.device_kind} x{jax.device_count()}, cpus {os.cpu_count()}, "
        f"load {_loadavg()}")
    peaks = {}  # a reference measured up front; each row divides by its own interleaved peak
    train_rows = []
    for m, o, a, me in points:
        cfg = cfgs[(m, o, a, me)]
        dtype = str(jnp.dtype(str(cfg.model.get("dtype", "float32"))))
        if dtype not in peaks:
            log(f"matmul peak (reference): {peak_n}x{peak_n} {dtype} ...")
            load0 = _loadavg()
            peaks[dtype] = measure_matmul_peak(peak_n, dtype)
            res.add({"kind": "peak", "n": peak_n, "dtype": dtype, "gflops": peaks[dtype],
                     "load_before": load0, "load_after": _loadavg(), "backend": jax.default_backend(),
                     "device": dev.device_kind})
            log(f"  {peaks[dtype]:,.1f} GFLOP/s")
        log(f"train {m}/{o}" + (f" attention={a}" if a else "") + (f" mesh={me}" if me else "")
            + f" batch {args.batch} seq {args.seq} ...")
        row = bench_train(m, o, args.batch, args.seq, args.steps, a, overrides=args.override,
                          warmup=args.warmup, max_seconds=max_s, peak_n=peak_n, mesh=me)
        train_rows.append(res.add(row))
        log(f"  {row['step_ms']:,.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%} "
            f"of {row['peak_gflops']:,.1f} GFLOP/s (compile {row['compile_s']:.1f} s, "
            f"{row['timed_steps']} timed steps, load {row['load_after']})")
    nnx_rows = []
    if not args.no_nnx:
        log(f"NNX vs jax.jit: {args.nnx_model}/ar batch {args.batch} seq {args.seq}, "
            f"{len(NNX_VARIANTS)} variants round-robin ...")
        nnx_rows = [res.add(r) for r in bench_nnx_vs_jit(args.nnx_model, "ar", args.batch, args.seq,
                                                         args.nnx_steps, overrides=args.override)]
    print(f"\nTraining speed ({jax.default_backend()}: {dev.device_kind}, {os.cpu_count()} cpus; MFU against "
          f"the best n={peak_n} matmul timed between the steps of each row; up-front reference "
          + ", ".join(f"{v:,.1f} GFLOP/s {k}" for k, v in peaks.items()) + ")")
    columns = (TRAIN_COLUMNS if meshes == [None]
               else TRAIN_COLUMNS[:3] + [("mesh", "mesh", "{}")] + TRAIN_COLUMNS[3:])
    print(format_table(train_rows, columns))
    if meshes != [None]:
        _print_mesh_ratios(train_rows)
    pair_rows = []
    if len([m for m in meshes if m]) > 1 and args.mesh_rounds > 0:
        named = [x for x in meshes if x]
        for m, o in [(m, o) for m in models for o in objectives]:
            log(f"meshes round-robin: {m}/{o} {','.join(named)}, {args.mesh_rounds} rounds ...")
            rows = bench_mesh_pairs(m, o, named, args.batch, args.seq, args.mesh_rounds,
                                    overrides=args.override)
            pair_rows += [res.add(r) for r in rows]
        print(f"\nSame step on each mesh, round-robin ({args.mesh_rounds} rounds; vs single = median paired "
              "ratio of tokens/s)")
        print(format_table(pair_rows, PAIR_COLUMNS))
    if nnx_rows:
        r0 = nnx_rows[0]
        print(f"\nSame train step, NNX vs jax.jit ({r0['model']}/{r0['objective']}, batch {r0['batch']}, "
              f"seq {r0['seq']}; {r0['timed_steps']} round-robin rounds; vs jit = median paired ratio)")
        print(format_table(nnx_rows, NNX_COLUMNS))
        nnx = next(r for r in nnx_rows if r["variant"] == "nnx_jit")
        extra = nnx["dispatch_ms"] - r0["dispatch_ms"]
        print(f"nnx.jit / jax.jit step time: {nnx['ratio']:.3f} "
              f"({'within' if nnx['ratio'] <= 1.10 else 'NOT within'} 10%); nnx.jit host overhead "
              f"{extra:+.1f} ms per call = {extra / r0['step_ms']:+.2%} of a step")
    print(f"\nload average (1 min): {_loadavg()}; results: {res.path}")
    return {"dir": str(res.dir), "train": train_rows, "nnx": nnx_rows, "mesh_pairs": pair_rows}
