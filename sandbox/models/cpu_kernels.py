"""CPU kernels for XLA:CPU: C++ functions (``cpu_kernels.cc``) called through the XLA FFI.

``attention(q, k, v, causal)`` with ``q[B, L, H, D]``, ``k[B, S, K, D]``, ``v[B, S, K, Dv]``
(``H % K == 0``, ``S >= L``, float32) returns ``[B, L, H, Dv]``: softmax attention with a
causal mask (queries aligned to the end of the keys, as ``attention._chunked``) or none. It
is differentiable (``jax.custom_vjp``: the forward keeps the row log-sum-exp, the backward
recomputes the probabilities from it, FlashAttention-2 style) and runs inside ``jit``,
``scan`` and ``while_loop`` like any op. Why a kernel, and what it bought, is in
docs/design.md ("Training speed against PyTorch"): XLA:CPU materialises the score tensors
and spends most of attention's time in memory-bound passes over them; the kernel keeps a
block of queries' scores in cache from the QK^T matmul through the PV matmul.

``matmul(a, b)``: ``a[M, K] @ b[K, N]`` float32, differentiable (its backward is two more
calls of the same kernel), split over XLA's threads. It is the backbone's dense matmul under
``model.matmul=blas``; it pays off only with MKL's ``sgemm`` (about 1.08x on the tiny train
step; with OpenBLAS no faster than XLA's own dot), so ``model.matmul=auto`` picks it only
where MKL is installed (a dependency on Linux x86-64, the ``mkl`` wheel).

Build and load (once per process, on first use):
- the source is compiled with the system C++ compiler (``$CXX`` or ``g++``) against JAX's
  FFI headers (``jax.ffi.include_dir()``), ``-O3 -march=native -ffast-math`` (vectorised
  ``exp``; compiled and linked in two steps, so the library does not switch the process to
  flush-to-zero as a ``-ffast-math`` link does), into a cache folder
  (``$SANDBOX_KERNEL_CACHE``, else ``~/.cache/jax-diffusion-sandbox/kernels``) under a name
  hashed from the source, the flags, jaxlib's version and the CPU, so a rebuild happens only
  when one of them changes; the file is written under a temporary name and renamed, so
  concurrent builds are safe;
- the matmuls inside are a single-threaded ``sgemm``: MKL's (the ``mkl`` wheel, a dependency
  on Linux x86-64; sequential threading layer) where it is installed, else OpenBLAS's from the
  ``scipy-openblas32`` wheel (a dependency; its own copy, NumPy's is left alone);
  ``SANDBOX_CPU_BLAS=openblas`` forces the latter. The parallelism comes from XLA's
  intra-op thread pool, so the kernels never compete with XLA for the cores;
- ``status()`` says whether the kernels are usable and, if not, why (no compiler, the build
  failed, no BLAS); ``blas()`` names the BLAS. Nothing here raises: ``model.attention=auto``
  then keeps the portable chunked kernel and ``model.matmul=auto`` XLA's dot, and an
  explicit ``fused`` / ``blas`` is refused in one line.

The custom calls are not partitioned over a mesh (XLA would gather their operands), so the
``auto`` settings pick them only on a single CPU device (``sandbox.core.mesh``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from sandbox.core.errors import UserError

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
FLAGS = ("-O3", "-march=native", "-ffast-math", "-std=c++17", "-fPIC", "-w")
LINK = ("-shared",)
FORWARD, BACKWARD, MATMUL = "sandbox_attention_fwd", "sandbox_attention_bwd", "sandbox_matmul"
_STATE: dict = {}


def cache_dir() -> Path:
    env = os.environ.get("SANDBOX_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "jax-diffusion-sandbox" / "kernels"


def _cpu_id() -> str:
    """The CPU's model and feature flags (``-march=native`` code is only valid on a CPU
    with the same features)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Path:
    """The compiled kernel library, from the cache or built now. Raises RuntimeError with
    the reason when it cannot be built."""
    cxx = os.environ.get("CXX", "g++")
    exe = shutil.which(cxx)
    if exe is None:
        raise RuntimeError(f"no C++ compiler ('{cxx}' not found; set $CXX)")
    include = jax.ffi.include_dir()
    key = hashlib.sha256("\n".join([SOURCE.read_text(), exe, *FLAGS, jaxlib.__version__, include,
                                    *LINK, _cpu_id()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"cpu_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    obj = tmp[:-3] + ".o"
    try:
        # compile and link in two steps: -ffast-math on the link line would add crtfastmath.o,
        # whose constructor turns on flush-to-zero for the whole process when the library loads
        for cmd in ([exe, *FLAGS, "-c", f"-I{include}", str(SOURCE), "-o", obj],
                    [exe, *LINK, obj, "-o", tmp]):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                last = (p.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{cxx} failed on {SOURCE.name}: {last}")
        os.replace(tmp, out)
    finally:
        for f in (tmp, obj):
            if os.path.exists(f):
                os.unlink(f)
    return out


def _openblas_sgemm() -> int:
    """The address of scipy-openblas32's ``cblas_sgemm``, its threads set to one."""
    import scipy_openblas32

    lib_dir = Path(scipy_openblas32.get_lib_dir())
    lib = ctypes.CDLL(str(lib_dir / scipy_openblas32.get_library(fullname=True)))
    lib.scipy_openblas_set_num_threads(1)
    return ctypes.cast(lib.scipy_cblas_sgemm, ctypes.c_void_p).value


def _mkl_sgemm() -> int | None:
    """The address of MKL's LP64 ``cblas_sgemm`` on its sequential threading layer, or None
    where the ``mkl`` wheel is not installed."""
    from importlib import metadata

    try:
        files = metadata.files("mkl") or []
    except metadata.PackageNotFoundError:
        return None
    rt = [f for f in files if f.name.startswith("libmkl_rt.so")]
    if not rt:
        return None
    lib = ctypes.CDLL(str(rt[0].locate()), mode=ctypes.RTLD_GLOBAL)
    lib.MKL_Set_Threading_Layer(1)  # MKL_THREADING_SEQUENTIAL, before any MKL call
    lib.MKL_Set_Interface_Layer(0)  # MKL_INTERFACE_LP64: 32-bit integers
    return ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value


def _sgemm() -> tuple[int, str]:
    forced = os.environ.get("SANDBOX_CPU_BLAS", "")
    if forced not in ("", "mkl", "openblas"):
        raise RuntimeError(f"SANDBOX_CPU_BLAS={forced}: choose mkl or openblas")
    if forced != "openblas":
        mkl = _mkl_sgemm()
        if mkl is not None:
            return mkl, "mkl"
        if forced == "mkl":
            raise RuntimeError("SANDBOX_CPU_BLAS=mkl but the mkl wheel is not installed "
                               "(pip install mkl==2026.2.1; Linux x86-64)")
    return _openblas_sgemm(), "openblas"


def status() -> tuple[bool, str]:
    """(usable, reason). Builds, loads and registers the kernels the first time it is asked."""
    if "ok" not in _STATE:
        try:
            lib = ctypes.CDLL(str(_build()))
            address, blas_name = _sgemm()
            lib.sandbox_set_sgemm(ctypes.c_void_p(address))
            for name, fn in ((FORWARD, lib.SandboxAttentionForward), (BACKWARD, lib.SandboxAttentionBackward),
                             (MATMUL, lib.SandboxMatmul)):
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(fn), platform="cpu")
            _STATE.update(ok=True, reason="", lib=lib, blas=blas_name)  # keep the library loaded
        except (ImportError, OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
            _STATE.update(ok=False, reason=str(e) or type(e).__name__, blas="")
    return _STATE["ok"], _STATE["reason"]


def require(setting: str, fallback: str) -> None:
    """Refuse ``setting`` (e.g. ``model.attention=fused``) in one line where the kernels are
    unavailable, naming the reason and the ``fallback`` setting."""
    ok, why = status()
    if not ok:
        raise UserError(f"{setting}: the CPU kernels are unavailable ({why}); use {fallback}")


def blas() -> str:
    """``mkl`` or ``openblas``: the sgemm the kernels call ("" when they are unavailable)."""
    status()
    return _STATE["blas"]


def supports(q, k, v, causal: bool) -> bool:
    """Whether the kernel computes this call: float32, 4-D, grouped heads, S >= L for a
    causal mask (the shapes ``attention._chunked`` takes), and the kernel built."""
    return (q.ndim == k.ndim == v.ndim == 4 and all(a.dtype == jnp.float32 for a in (q, k, v))
            and q.shape[2] % k.shape[2] == 0 and (k.shape[1] >= q.shape[1] or not causal)
            and status()[0])


def _block(causal: bool) -> np.int64:
    """Queries per task: the fastest of 16-256 for one layer's forward + backward at
    32 x 4 heads x 256 x 64 on a 2-core AVX-512 Xeon (causal 64: 44.3 ms, 32: 45.4, 128: 48.7;
    bidirectional 256: 46.4, 128: 47.9, 64: 52.3; round-robin medians, 12 rounds)."""
    return np.int64(64 if causal else 256)


def _forward(q, k, v, causal: bool):
    b, l, h, _ = q.shape
    shapes = (jax.ShapeDtypeStruct((b, l, h, v.shape[3]), jnp.float32),
              jax.ShapeDtypeStruct((b, h, l), jnp.float32))
    return jax.ffi.ffi_call(FORWARD, shapes, vmap_method="sequential")(
        q, k, v, causal=causal, block=_block(causal))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(q, k, v, causal: bool):
    """q[B, L, H, D] already scaled by 1/sqrt(D)."""
    return _forward(q, k, v, causal)[0]


def _fused_fwd(q, k, v, causal: bool):
    out, lse = _forward(q, k, v, causal)
    return out, (q, k, v, out, lse)


def _fused_bwd(causal: bool, res, g):
    q, k, v, out, lse = res
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (q, k, v))
    return tuple(jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="sequential")(
        q, k, v, out, lse, g.astype(jnp.float32), causal=causal, block=_block(causal)))


_fused.defvjp(_fused_fwd, _fused_bwd)


def attention(q, k, v, causal: bool):
    """q[B, L, H, D], k[B, S, K, D], v[B, S, K, Dv] -> [B, L, H, Dv] (see the module doc).
    A bidirectional mask is None; a causal query i sees keys j <= i + S - L."""
    if not supports(q, k, v, causal):
        raise ValueError("cpu_kernels.attention: unsupported call (check supports() first)")
    return _fused(q * (1.0 / math.sqrt(q.shape[-1])), k, v, bool(causal))


def _mm(a, b, ta: bool = False, tb: bool = False):
    m = a.shape[1] if ta else a.shape[0]
    n = b.shape[0] if tb else b.shape[1]
    return jax.ffi.ffi_call(MATMUL, jax.ShapeDtypeStruct((m, n), jnp.float32),
                            vmap_method="sequential")(a, b, ta=ta, tb=tb)


@jax.custom_vjp
def matmul(a, b):
    """a[M, K] @ b[K, N] -> [M, N], float32, through the kernel's sgemm (check ``status()``
    first). Backward: da = g b^T, db = a^T g, the same kernel with transposed operands."""
    return _mm(a, b)


def _matmul_fwd(a, b):
    return _mm(a, b), (a, b)


def _matmul_bwd(res, g):
    a, b = res
    g = g.astype(jnp.float32)
    return _mm(g, b, tb=True), _mm(a, g, ta=True)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
