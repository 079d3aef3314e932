"""The denominator of MFU: what this device reaches on a large square matmul.

A compiled, warmed-up ``[n, n] @ [n, n]`` in the model's compute dtype, timed in the same
process as the training steps it is compared with (same thread settings, same XLA flags).
:func:`matmul_timer` returns a function that times one call, so the training benchmark
can interleave peak probes with its timed steps (a peak measured once, a minute before,
on a 2-core machine shared with other jobs was off by 2x); :func:`measure_matmul_peak` is
the stand-alone median used as an up-front reference.
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


def measure_bandwidth(nbytes: int, repeats: int = 9, warmup: int = 2) -> float:
    """Achieved GB/s reading a float32 matrix of about ``nbytes`` in a matrix-vector product
    (median of ``repeats``): how fast a decoding step can stream weights of that size. A
    matvec, not a copy or a sum: XLA:CPU runs it on every core with vector loads, as it does
    the model's matmuls at batch 1 (measured here: a sum reached ~14 GB/s where the matvec
    reached ~20 and a one-token step of the tiny model ~36), and the working set of the
    model's own size decides which cache level serves it."""
    cols = 1024
    rows = max(1, int(nbytes) // (4 * cols))
    args = (jnp.ones((1, cols), jnp.float32), jnp.ones((cols, rows), jnp.float32))
    time_one = _timer(jax.jit(jnp.matmul), args, warmup)
    gbs = 4.0 * cols * rows / statistics.median(time_one() for _ in range(max(1, repeats))) / 1e9
    if not (gbs > 0 and math.isfinite(gbs)):
        raise RuntimeError(f"bandwidth measured as {gbs} GB/s")
    return gbs
