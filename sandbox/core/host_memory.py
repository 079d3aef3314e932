"""Host memory: keep the memory a compiled step frees for the next step instead of giving it
back to the operating system (Linux with glibc; in the processes that train).

Why. XLA:CPU allocates an executable's temporaries (every activation of a train step) when
it runs and frees them when it ends. Under glibc's defaults a block that large is mapped
with ``mmap`` (above the mmap threshold, at most 32 MiB, or from a worker thread's own
arena, which cannot hold it) and unmapped on ``free``, so each step faults its whole
working set back in, page by page, zero-filled by the kernel: on 2 cores about 210,000 minor
page faults (0.8 GiB) and ~0.35 s of kernel time per step at the tiny shape (batch 32 x 256,
a ~1.0 s step), 610,000 (2.4 GiB) and ~1 s at ``model=small`` (a ~4.5 s step); without them
the steps ran 1.22x and 1.12x faster (``docs/design.md``, "Host memory"). PyTorch's eager
step frees and reallocates tensors below the threshold, which glibc reuses; this is the
same reuse for XLA's larger blocks.

What. ``mallopt``, called by the programs that train (``python -m sandbox.train``, ``bench
train``) as their first statement, before NumPy and JAX start threads:
- ``M_ARENA_MAX = 1``: one arena for every thread (a thread arena is a 64 MiB heap; bigger
  blocks are mapped whatever the other settings say);
- ``M_MMAP_MAX = 0``: large blocks come from the heap, not from ``mmap``;
- ``M_TRIM_THRESHOLD = -1``: the heap's free top is never returned (a finite threshold is an
  ``int`` here, at most 2 GiB, less than a small model's step frees).
The heap grows to the largest step's peak once and is reused from then on. Costs: the
process keeps that peak (its resident size does not shrink after a big step), and all its
threads share one arena lock. A train step makes a few large allocations, so the lock costs
it nothing measurable; a decoding loop makes many small ones from XLA's threads every step,
and there the one lock made ``bench gen`` 7-10% slower (``__lll_lock_wait_private`` in
``perf``): so decoding, evaluation and the tests keep glibc's defaults.

Only where it can take full effect: once NumPy or JAX is loaded, threads may own arenas of
their own already (NumPy's OpenBLAS starts one at import), and a later ``M_ARENA_MAX`` would
share blocks between those and the main one, part of the gain for all of the lock. So a
call after that changes nothing and says so (``status()``); so does ``SANDBOX_MALLOC=system``
(to compare, or where the memory must shrink back) and any system without glibc (macOS,
musl).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim (man mallopt)

_state = {"mode": "system", "reason": "not applied yet"}


def keep_freed_memory() -> dict:
    """Apply the settings above once (idempotent); returns :func:`status`."""
    if _state["mode"] == "kept":
        return status()
    loaded = [m for m in ("numpy", "jax") if m in sys.modules]
    if os.environ.get("SANDBOX_MALLOC", "").strip().lower() == "system":
        _state.update(mode="system", reason="SANDBOX_MALLOC=system")
    elif loaded:
        _state.update(mode="system", reason=f"called after {' and '.join(loaded)} was loaded (too late)")
    elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _state.update(mode="system", reason=f"not glibc ({sys.platform})")
    else:
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError) as e:
            _state.update(mode="system", reason=f"no mallopt ({e})")
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            failed = [p for p, v in _SETTINGS if mallopt(p, v) != 1]
            if failed:
                _state.update(mode="system", reason=f"mallopt refused {failed}")
            else:
                _state.update(mode="kept", reason="one arena, no mmap, no trim")
    return status()


def status() -> dict:
    """``{"mode": "kept" | "system", "reason": ...}``: what :func:`keep_freed_memory` did."""
    return dict(_state)
