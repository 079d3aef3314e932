"""The denominator of MFU: what this device reaches on a large square matmul.

A compiled, warmed-up ``[n, n] @ [n, n]`` in the model's compute dtype, timed in the same
process as the training steps it is compared with (same thread settings, same XLA flags).
:func:`matmul_timer` returns a function that times one call, so the training benchmark
can interleave peak probes with its timed steps (a peak measured once, a minute before,
on a 2-core machine shared with other jobs was off by 2x); :func:`measure_matmul_peak` is
the stand-alone median used as an up-front reference.

The generation benchmark's ``probe`` row (the measured figures of ``conf/hardware/cpu.yaml``)
adds :func:`measure_bandwidth` (a weight-sized matrix-vector product) and :func:`measure_draw`
(the samplers' exact categorical draw per logit value), both timed inside a compiled loop so
that an executable's launch cost does not enter them.
"""

from __future__ import annotations

import math
import statistics
import time

import jax
import jax.numpy as jnp


def check_gflops(gflops: float) -> float:
    """``gflops`` if it is a usable peak; a zero or non-finite one is a measurement bug."""
    if not (gflops > 0 and math.isfinite(gflops)):
        raise RuntimeError(f"matmul peak measured as {gflops} GFLOP/s")
    return gflops


def _timer(f, args, warmup: int):
    """``time_one() -> seconds`` of one blocking call of the compiled ``f(*args)``, warmed up."""
    for _ in range(max(1, warmup)):
        f(*args).block_until_ready()

    def time_one() -> float:
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        return time.perf_counter() - t0

    return time_one


def matmul_timer(n: int = 2048, dtype: str = "float32", warmup: int = 2):
    """A compiled, warmed-up ``[n, n] @ [n, n]``: returns ``(time_one() -> seconds, flops)``."""
    dt = jnp.dtype(dtype)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    return _timer(jax.jit(jnp.matmul), (a, b), warmup), 2.0 * n**3


def measure_matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 10, warmup: int = 2) -> float:
    """Achieved GFLOP/s of one jitted ``[n, n] @ [n, n]`` matmul (median of ``repeats``)."""
    time_one, flops = matmul_timer(n, dtype, warmup)
    times = [time_one() for _ in range(max(1, repeats))]
    return check_gflops(flops / statistics.median(times) / 1e9)


def looped(step):
    """``f(n, x, *args)``, jitted: ``n`` (a traced int, so one compile serves any count) calls of
    ``step(x, *args) -> array`` in one compiled loop, each call's input depending on the sum of
    the previous output (so none is hoisted or cut short; the sum also keeps XLA from computing
    only a slice): a per-call time free of the executable's launch cost (~0.5-1 ms on XLA:CPU,
    as much as a one-token forward of a small model). Returns the sum of the outputs."""

    def loop(n, x, *args):
        def body(_, carry):
            x, acc = carry
            y = jnp.sum(step(x, *args).astype(jnp.float32))
            return x + (y > 3e38).astype(x.dtype), acc + y  # never true: a dependence only
        return jax.lax.fori_loop(0, n, body, (x, jnp.float32(0)))[1]

    return jax.jit(loop)


def measure_bandwidth(nbytes: int, repeats: int = 9, warmup: int = 2, loop: int = 16) -> float:
    """Achieved GB/s reading a float32 matrix of about ``nbytes`` in a matrix-vector product
    (median of ``repeats`` calls of a compiled loop of ``loop`` products): how fast a decoding
    step can stream weights of that size. A matvec, not a copy or a sum: XLA:CPU runs it on
    every core with vector loads, as it does the model's matmuls at batch 1 (measured here: a
    sum reached ~14 GB/s where the matvec reached ~20 and a one-token step of the tiny model
    ~36), and the working set of the model's own size decides which cache level serves it.
    In a loop because one call's launch costs about as much as streaming 13 MB (a single call
    per sample read 19-33 GB/s for the same matrix in one benchmark)."""
    cols = 1024
    rows = max(1, int(nbytes) // (4 * cols))
    args = (jnp.ones((1, cols), jnp.float32), jnp.ones((cols, rows), jnp.float32))
    time_one = _timer(looped(jnp.matmul), (jnp.int32(loop), *args), warmup)
    gbs = 4.0 * cols * rows * loop / statistics.median(time_one() for _ in range(max(1, repeats))) / 1e9
    if not (gbs > 0 and math.isfinite(gbs)):
        raise RuntimeError(f"bandwidth measured as {gbs} GB/s")
    return gbs


def measure_draw(vocab: int, rows: int = 128, repeats: int = 7, warmup: int = 1, loop: int = 16) -> float:
    """Seconds per logit value of the samplers' exact categorical draw
    (``sandbox.samplers.categorical.sample``, float64 Gumbel noise and an argmax) over
    ``[rows, vocab]`` logits, in a compiled loop: the sampling cost a diffusion step pays per
    position and vocabulary entry (on this CPU ~30 ns, so a 128-position canvas over 260
    tokens costs ~1 ms a step, ~10-15% of the tiny model's forward; measured 2026-12-06)."""
    from sandbox.samplers.categorical import sample

    logits = jax.random.normal(jax.random.PRNGKey(0), (rows, vocab), jnp.float32)

    def draw(x, key):
        return sample(jax.random.fold_in(key, x[0, 0].astype(jnp.int32)), x, "exact")

    time_one = _timer(looped(draw), (jnp.int32(loop), logits, jax.random.PRNGKey(1)), warmup)
    per = statistics.median(time_one() for _ in range(max(1, repeats))) / loop / (rows * vocab)
    if not (per > 0 and math.isfinite(per)):
        raise RuntimeError(f"draw cost measured as {per} s per value")
    return per
