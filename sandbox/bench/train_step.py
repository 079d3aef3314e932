"""Timing the trainer's own train step: one matrix point, and several meshes round-robin.

Protocol (docs/design.md, "Training loop" and "CPU performance"):
- **The step is the trainer's.** Each point is composed and built by the one build recipe
  (``sandbox.core.build``: ``compose`` + ``build``) with ``model=``, ``objective=``,
  ``train.batch_size`` and ``train.seq_len`` set as overrides, so the recipe's checks
  (sequence length against ``model.max_len``, batch against the devices, objective against
  backbone) are the trainer's. The train state is ``Built.init_state()`` on the layout of
  the config's ``mesh`` (``single`` unless ``--mesh`` or an override says otherwise) and
  the step is ``sandbox.core.step.make_train_step`` on that layout: what ``sandbox.train``
  compiles, state donated. Batches are random tokens (speed does not depend on the text,
  so no corpus is prepared: ``ByteTokenizer``, ``data=False``).
- Compilation is timed apart (ahead-of-time ``lower().compile()``), then ``warmup``
  untimed steps, then the timed steps, each ended by ``jax.block_until_ready``. Per-step
  blocking exposes any host-side overhead instead of hiding it behind asynchronous
  dispatch: the conservative figure.
- MFU = achieved model FLOP/s (median step) / the matmul peak (``sandbox.bench.peak``)
  *interleaved* with the timed steps (a few timed matmuls after every step), best of
  those calls. Under contention the median step is slowed and the best matmul less so, so
  ``mfu`` errs low; ``mfu_best`` (fastest step / the same peak) estimates the uncontended
  figure. Both lists of samples are kept in the row. Model FLOPs are the recipe's
  ``flops_per_token`` (6N plus the full L x L attention term, whatever the mask), so MFU
  compares across attention kernels: a kernel that skips the masked half shows up as a
  higher MFU. MFU can pass 100% where the model's matmuls run faster than the square one.
- Each row records the 1-minute load average before and after it.
- Several meshes (:func:`bench_mesh_pairs`) are timed round-robin, one step of each per
  round, so a shared machine's load hits all alike; the ratio to ``mesh=single`` is the
  median of per-round paired ratios.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sandbox.bench.peak import check_gflops, matmul_timer
from sandbox.bench.profile import profile_step
from sandbox.bench.results import loadavg
from sandbox.core import host_memory
from sandbox.core.build import Built, build, compose
from sandbox.core.errors import UserError
from sandbox.core.mesh import device_info, resolve_attention
from sandbox.core.step import make_train_step
from sandbox.data.tokenizers import ByteTokenizer
from sandbox.models import cpu_kernels


# --- building a point -----------------------------------------------------------------------------
def point_overrides(model_name: str, objective_name: str, *, batch_size: int | None = None,
                    seq_len: int | None = None, attention: str | None = None, mesh: str | None = None,
                    overrides=(), seed: int = 0) -> list[str]:
    """The ``sandbox.train`` overrides of one benchmark point (the bench's flags last, so they
    win over ``-o``). ``None``: keep the config's value."""
    return [f"model={model_name}", f"objective={objective_name}", *overrides,
            *([f"model.attention={attention}"] if attention else []), *([f"mesh={mesh}"] if mesh else []),
            *([f"train.batch_size={batch_size}"] if batch_size is not None else []),
            *([f"train.seq_len={seq_len}"] if seq_len is not None else []), f"seed={seed}"]


def build_point(model_name: str, objective_name: str, *, abstract: bool = False, **kw) -> Built:
    """``build(compose(point_overrides(...)))`` on random tokens (byte tokenizer, no corpus).
    ``abstract``: check the point in one line without allocating anything."""
    cfg = compose(point_overrides(model_name, objective_name, **kw))
    return build(cfg, tokenizer=ByteTokenizer(), data=False, abstract=abstract)


def attention_of(b: Built) -> str:
    """The attention kernel the built model runs (``auto`` resolved as the model resolves it)."""
    impl = getattr(b.model, "cfg", {}).get("impl")
    return str(impl or resolve_attention(str(b.cfg.model.get("attention", "auto")),
                                         str(b.cfg.model.get("dtype") or "float32"),
                                         fused_ok=lambda: cpu_kernels.status()[0]))


def compute_dtype(model) -> str:
    """The model's compute dtype by name (``float32``, ``bfloat16``): the peak matmul's dtype."""
    return str(jnp.dtype(model.dtype))


def random_inputs(n: int, batch_size: int, seq_len: int, n_text: int, seed: int = 0):
    """``n`` (tokens int32[B, L], key) pairs on the default device, made before timing."""
    rng = np.random.default_rng(seed)
    base = jax.random.PRNGKey(seed)
    out = [(jnp.asarray(rng.integers(0, n_text, (batch_size, seq_len), dtype=np.int32)),
            jax.random.fold_in(base, i + 1)) for i in range(n)]
    return jax.block_until_ready(out)


def placed_inputs(layout, n: int, batch_size: int, seq_len: int, n_text: int, seed: int = 0):
    """:func:`random_inputs` placed as the trainer places them: batch split over the
    data-parallel devices, key replicated."""
    inputs = random_inputs(n, batch_size, seq_len, n_text, seed)
    return jax.block_until_ready([(layout.full_batch(b), layout.replicate(k)) for b, k in inputs])


def check_shape(batch_size: int, seq_len: int, steps: int) -> None:
    """One-line errors naming the bench flags (before the recipe sees the values)."""
    if batch_size < 1:
        raise UserError(f"--batch {batch_size} must be at least 1")
    if seq_len < 2:
        raise UserError(f"--seq {seq_len} must be at least 2")
    if steps < 1:
        raise UserError(f"--steps {steps} must be at least 1")


def step_summary(times: list[float]) -> dict:
    return {"step_ms": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
            "step_ms_max": 1e3 * max(times), "timed_steps": len(times)}


def _trainer_step(b: Built):
    """(train_step, state) exactly as ``sandbox.train`` makes them."""
    state = b.init_state()
    step = make_train_step(b.graphdef, b.objective, b.tx, float(b.cfg.train.ema_decay), b.layout, state)
    return step, state


# --- one matrix point -----------------------------------------------------------------------------
def bench_train(model_name: str, objective_name: str, batch_size: int = 32, seq_len: int = 256,
                steps: int = 10, attention: str | None = None, *, overrides=(), warmup: int = 1,
                max_seconds: float | None = None, min_steps: int = 3, peak_gflops: float | None = None,
                peak_n: int = 2048, peak_repeats: int = 2, seed: int = 0, mesh: str | None = None,
                profile_dir=None, profile_steps: int = 3) -> dict:
    """Time the trainer's train step for one model/objective at ``[batch_size, seq_len]``.

    ``profile_dir``: after timing, run ``profile_steps`` more steps under the profiler and
    write the per-operation table and trace there (``sandbox.bench.profile``); a profiler
    that cannot run is one warning line and the row is kept.

    ``mesh`` (``single``, ``dp``, ``fsdp``; None: the config's, ``single`` by default): the
    layout the state is placed on and the batches split over.

    Runs up to ``steps`` timed steps; with ``max_seconds``, stops early once at least
    ``min_steps`` were timed and their total passes ``max_seconds`` (so a slow device runs
    few steps of a big model and a fast one many). ``peak_gflops``: the matmul peak to
    divide by; when None it is measured here, in the model's dtype, interleaved with the
    timed steps (``peak_repeats`` ``peak_n``-sized matmuls after each step, best of them).

    Returns a row: model, objective, attention (the resolved kernel), matmul, cpu_blas,
    malloc (``sandbox.core.host_memory``'s mode), dtype, batch, seq, mesh, params
    (non-embedding), flops_per_token, compile_s, step_ms (median; min / max too),
    tokens_per_s, gflops (achieved), peak_gflops, mfu (fraction), mfu_best (fastest step),
    loss (last step), load averages, and the raw step and peak samples.
    """
    check_shape(batch_size, seq_len, steps)
    load0 = loadavg()
    b = build_point(model_name, objective_name, batch_size=batch_size, seq_len=seq_len, attention=attention,
                    mesh=mesh, overrides=overrides, seed=seed)
    layout, fpt, objective = b.layout, b.flops_per_token, b.objective
    dtype = compute_dtype(b.model)
    impl, n_params, model_label = attention_of(b), b.model.n_params(non_embedding=True), str(b.cfg.model.name)
    matmul = str(getattr(b.model, "cfg", {}).get("matmul", "xla"))
    peak_timer = matmul_timer(peak_n, dtype) if peak_gflops is None else None
    peak_times = [peak_timer[0]() for _ in range(peak_repeats)] if peak_timer else []
    train_step, state = _trainer_step(b)
    inputs = placed_inputs(layout, warmup + steps, batch_size, seq_len, b.tokenizer.n_text, seed)
    del b  # the state owns the arrays now (and donates them)

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
    dev = device_info()
    row = {"kind": "train", "model": model_label, "objective": objective.name,
           "attention": impl, "matmul": matmul,
           "cpu_blas": cpu_kernels.blas() if dev["backend"] == "cpu" else "",
           "malloc": host_memory.status()["mode"],
           "dtype": dtype, "batch": batch_size, "seq": seq_len,
           "mesh": layout.name, "mesh_shape": dict(layout.mesh.shape), "devices": dev["devices"],
           "overrides": list(overrides), "params": n_params, "flops_per_token": fpt,
           "compile_s": compile_s, **step_summary(times)}
    row["tokens_per_s"] = batch_size * seq_len / (row["step_ms"] / 1e3)
    row["gflops"] = fpt * row["tokens_per_s"] / 1e9
    if peak_timer:
        probes = [peak_timer[1] / t / 1e9 for t in peak_times]
        peak_gflops = check_gflops(max(probes))
        row.update(peak_n=peak_n, peak_samples=len(probes), peak_gflops_median=statistics.median(probes),
                   peak_gflops_samples=[round(g, 2) for g in probes])
    row["peak_gflops"] = peak_gflops
    row["mfu"] = row["gflops"] / peak_gflops
    row["mfu_best"] = fpt * batch_size * seq_len / (row["step_ms_min"] / 1e3) / 1e9 / peak_gflops
    row["step_ms_samples"] = [round(1e3 * t, 2) for t in times]
    row.update(loss=loss, warmup_steps=warmup, load_before=load0, load_after=loadavg(),
               backend=dev["backend"], device=dev["device"])
    if profile_dir is not None:
        parts = [model_label, objective.name, *([impl] if attention else []), *([mesh] if mesh else [])]
        name = "-".join(parts)
        try:
            prof = profile_step(step, state, inputs[warmup:] or inputs, profile_dir, name, profile_steps)
            row.update(profile=str(Path(profile_dir) / f"profile-{name}.md"), profile_trace=prof["trace"],
                       profile_step_ms=prof["step_ms"])
        except Exception as e:  # the profiler is a diagnostic: the timing row stands without it
            print(f"warning: --profile {name}: the profiler could not run ({type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); row kept without it",
                  file=sys.stderr)
    return row


# --- meshes round-robin ---------------------------------------------------------------------------
def bench_mesh_pairs(model_name: str, objective_name: str, meshes, batch_size: int = 32, seq_len: int = 256,
                     rounds: int = 5, *, overrides=(), warmup: int = 1, seed: int = 0) -> list[dict]:
    """The trainer's step on each of ``meshes`` (``single`` first), timed round-robin (one step
    of each per round, the order rotated). Per mesh: median step, and ``ratio`` = median over
    rounds of single's step time / this mesh's in the same round (tokens/s relative to
    mesh=single; paired, so a slow round cancels out). The losses after the last round must
    agree (same steps, same data)."""
    meshes = ["single", *[m for m in meshes if m != "single"]]
    check_shape(batch_size, seq_len, rounds)
    subjects = {}
    for me in meshes:
        b = build_point(model_name, objective_name, batch_size=batch_size, seq_len=seq_len, mesh=me,
                        overrides=overrides, seed=seed)
        step, state = _trainer_step(b)
        inputs = placed_inputs(b.layout, warmup + rounds, batch_size, seq_len, b.tokenizer.n_text, seed)
        t0 = time.perf_counter()
        compiled = step.lower(state, *inputs[0]).compile()
        subjects[me] = {"layout": b.layout, "step": compiled, "state": state, "inputs": inputs,
                        "compile_s": time.perf_counter() - t0, "times": []}
        del b
    load0 = loadavg()
    for i in range(warmup + rounds):
        for j in range(len(meshes)):
            sub = subjects[meshes[(i + j) % len(meshes)]]
            t0 = time.perf_counter()
            sub["state"], sub["m"] = sub["step"](sub["state"], *sub["inputs"][i])
            jax.block_until_ready((sub["state"], sub["m"]))
            if i >= warmup:
                sub["times"].append(time.perf_counter() - t0)
    base = subjects["single"]
    devices = device_info()["devices"]
    rows = []
    for me in meshes:
        sub = subjects[me]
        ratio = statistics.median(b / t for b, t in zip(base["times"], sub["times"], strict=True))
        rows.append({"kind": "mesh_pairs", "model": model_name, "objective": objective_name, "mesh": me,
                     "mesh_shape": dict(sub["layout"].mesh.shape), "devices": devices,
                     "batch": batch_size, "seq": seq_len, "compile_s": sub["compile_s"],
                     **step_summary(sub["times"]),
                     "tokens_per_s": batch_size * seq_len / statistics.median(sub["times"]),
                     "ratio": ratio, "loss": float(sub["m"]["loss"]), "load_before": load0,
                     "load_after": loadavg(), "step_ms_samples": [round(1e3 * t, 2) for t in sub["times"]]})
    return rows
