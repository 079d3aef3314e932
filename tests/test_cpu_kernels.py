"""The fused CPU attention kernel (sandbox/models/cpu_kernels.py and .cc).

Values and gradients against the portable chunked kernel over the shapes the backbones
produce (grouped-query heads, queries aligned to the end of longer keys, value widths other
than the query width, lengths that are not a multiple of the kernel's block); the calls it
leaves to the chunked kernel; the ``auto`` resolution with and without the kernel; the one-
line refusal of an explicit ``model.attention=fused`` that cannot be built; the build cache.

The kernel needs a C++ compiler. Where one is installed (every machine the sandbox's CI
runs on) a kernel that does not build fails these tests instead of skipping them."""

from __future__ import annotations

import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, compose, need_cpu_kernel

from sandbox.core.build import build_model
from sandbox.core.errors import UserError
from sandbox.core.mesh import resolve_attention
from sandbox.data.tokenizers import ByteTokenizer
from sandbox.models import attention as A
from sandbox.models import cpu_kernels as C


def _qkv(b, l, h, kh, s, d, dv, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
                 for shape in ((b, l, h, d), (b, s, kh, d), (b, s, kh, dv)))


def _loss(fn, causal):
    # a non-linear read of the output, so every output element gets its own cotangent
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, "causal" if causal else "bidirectional")))


SHAPES = [
    (2, 100, 4, 2, 100, 64, 64),   # grouped-query, L not a multiple of the block
    (2, 70, 2, 2, 130, 32, 32),    # causal queries aligned to the end of longer keys
    (1, 5, 3, 1, 9, 16, 8),        # multi-query, value width below the query width
    (1, 300, 2, 2, 300, 16, 16),   # several bidirectional blocks (256 + 44)
]


# the long causal case (several causal blocks are already in the first shape) is `slow`
@pytest.mark.parametrize("shape,causal", [
    pytest.param(sh, c, marks=pytest.mark.slow) if sh[1] == 300 and c else (sh, c)
    for sh in SHAPES for c in (True, False)])
def test_values_and_gradients_match_the_chunked_kernel(shape, causal):
    need_cpu_kernel()
    b, l, h, kh, s, d, dv = shape
    q, k, v = _qkv(b, l, h, kh, s, d, dv)

    def fused(q, k, v, mask):
        return C.attention(q, k, v, mask == "causal")

    def chunked(q, k, v, mask):
        return A._chunked(q, k, v, mask, 64)

    got = jax.jit(jax.value_and_grad(_loss(fused, causal), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.value_and_grad(_loss(chunked, causal), (0, 1, 2)))(q, k, v)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                                   atol=1e-5 * float(np.max(np.abs(np.asarray(w)))))
    out = C.attention(q, k, v, causal)
    np.testing.assert_allclose(np.asarray(out), np.asarray(A._chunked(
        q, k, v, "causal" if causal else "bidirectional", 64)), rtol=1e-5, atol=1e-5)


def test_causal_rows_see_no_later_key():
    """Changing the last key and value leaves every earlier causal query unchanged."""
    need_cpu_kernel()
    q, k, v = _qkv(1, 16, 2, 2, 16, 8, 8)
    out = C.attention(q, k, v, True)
    out2 = C.attention(q, k.at[:, -1].set(5.0), v.at[:, -1].set(-3.0), True)
    np.testing.assert_array_equal(np.asarray(out[:, :-1]), np.asarray(out2[:, :-1]))
    assert not np.allclose(np.asarray(out[:, -1]), np.asarray(out2[:, -1]))


def test_attend_runs_the_kernel_and_leaves_other_calls_to_the_chunked_kernel():
    need_cpu_kernel()
    q, k, v = _qkv(2, 32, 2, 2, 32, 16, 16)
    for mask in ("causal", "bidirectional"):
        jaxpr = str(jax.make_jaxpr(lambda q, k, v, mask=mask: A.attend(q, k, v, mask, "fused", 16))(q, k, v))
        assert C.FORWARD in jaxpr
        np.testing.assert_allclose(np.asarray(A.attend(q, k, v, mask, "fused", 16)),
                                   np.asarray(A.attend(q, k, v, mask, "chunked", 16)), rtol=1e-5, atol=1e-5)
    prompt = A.PromptMask(jnp.arange(32)[None, :].repeat(2, 0) < 8)
    bd = A.BlockDiffusionMask(8)
    q2, k2, v2 = _qkv(2, 32, 2, 2, 32, 16, 16, seed=1)
    cases = [(q, k, v, "causal", 8), (q, k, v, prompt, 0), (q2, k2, v2, bd, 0),
             (q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), "causal", 0)]
    for qq, kk, vv, mask, window in cases:
        fn = lambda q, k, v, mask=mask, window=window, impl="fused": A.attend(q, k, v, mask, impl, 16, window)
        assert C.FORWARD not in str(jax.make_jaxpr(fn)(qq, kk, vv))
        np.testing.assert_array_equal(np.asarray(fn(qq, kk, vv), np.float32),
                                      np.asarray(fn(qq, kk, vv, impl="chunked"), np.float32))


def test_vmap_and_scan_run_the_kernel():
    need_cpu_kernel()
    q, k, v = _qkv(3, 12, 2, 2, 12, 8, 8)
    batched = jax.vmap(lambda q, k, v: C.attention(q[None], k[None], v[None], True)[0])(q, k, v)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(C.attention(q, k, v, True)), rtol=1e-6)
    _, scanned = jax.lax.scan(lambda c, x: (c, C.attention(x[0][None], x[1][None], x[2][None], False)[0]),
                              0, (q, k, v))
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(C.attention(q, k, v, False)), rtol=1e-6)


def test_auto_picks_the_kernel_on_one_cpu_device_in_float32():
    need_cpu_kernel()
    ok = lambda: C.status()[0]  # noqa: E731
    assert resolve_attention("auto", "float32", fused_ok=ok) == "fused"
    assert resolve_attention("auto", "bfloat16", fused_ok=ok) == "chunked"
    assert resolve_attention("chunked", "float32", fused_ok=ok) == "chunked"
    assert build_model(compose(TINY), ByteTokenizer(), 0).blocks[0].attn.impl == "fused"
    assert A.resolve_impl("fused", jnp.float32) == "fused"


def test_without_the_kernel_auto_keeps_chunked_and_fused_is_refused(monkeypatch, tmp_path):
    """A machine without a compiler: status says why, ``auto`` falls back, and an explicit
    request ends in one line naming the option and the remedy."""
    monkeypatch.setattr(C, "_STATE", {})
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setenv("SANDBOX_KERNEL_CACHE", str(tmp_path))
    ok, why = C.status()
    assert not ok and "no-such-compiler-xyz" in why
    assert resolve_attention("auto", "float32", fused_ok=lambda: C.status()[0]) == "chunked"
    assert build_model(compose(TINY), ByteTokenizer(), 0).blocks[0].attn.impl == "chunked"
    with pytest.raises(UserError) as e:
        A.resolve_impl("fused", jnp.float32)
    msg = str(e.value)
    assert "\n" not in msg and "model.attention=fused" in msg and "model.attention=chunked" in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_failed_build_says_why_and_leaves_no_file(monkeypatch, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(C, "SOURCE", bad)
    monkeypatch.setenv("SANDBOX_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="g\\+\\+ failed on bad.cc"):
        C._build()
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_build_is_cached(monkeypatch, tmp_path):
    need_cpu_kernel()
    monkeypatch.setenv("SANDBOX_KERNEL_CACHE", str(tmp_path))
    first = C._build()
    assert first.parent == tmp_path and first.exists()

    def no_compiler(*a, **k):
        raise AssertionError("rebuilt a cached kernel")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    assert C._build() == first


def test_loading_the_kernel_keeps_denormals():
    """A ``-ffast-math`` link would add crtfastmath.o, whose constructor switches the loading
    thread to flush-to-zero: NumPy in the main thread would then lose every denormal."""
    need_cpu_kernel()
    assert np.float32(1e-40) * np.float32(1.5) > 0


# --- the dense matmul (model.matmul=blas) --------------------------------------------------------
@pytest.mark.parametrize("shape", [(300, 64, 96), (256, 96, 40), (17, 5, 300)])
def test_matmul_values_and_gradients_match_xla(shape):
    """Whatever BLAS the kernels load (MKL on Linux x86-64, OpenBLAS elsewhere; the OpenBLAS
    path is checked below); the shapes split along rows (M >= N) and along columns (M < N),
    with uneven pieces."""
    need_cpu_kernel()
    m, k, n = shape
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
    np.testing.assert_allclose(np.asarray(C.matmul(a, b)), np.asarray(a @ b), rtol=1e-5, atol=1e-4)
    loss = lambda f: (lambda a, b: jnp.sum(jnp.sin(f(a, b))))  # noqa: E731
    got = jax.jit(jax.grad(loss(C.matmul), (0, 1)))(a, b)
    want = jax.jit(jax.grad(loss(jnp.matmul), (0, 1)))(a, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)


def test_the_model_routes_large_float32_matmuls_only():
    from sandbox.models.transformer import dense

    need_cpu_kernel()
    w = jnp.ones((8, 4), jnp.float32)
    big = lambda x: str(jax.make_jaxpr(lambda x: dense(x, w, "blas"))(x))  # noqa: E731
    assert C.MATMUL in big(jnp.ones((256, 8), jnp.float32))
    assert C.MATMUL not in big(jnp.ones((16, 8), jnp.float32))  # a decoding step: XLA's dot
    assert C.MATMUL not in big(jnp.ones((256, 8), jnp.bfloat16))
    assert C.MATMUL not in str(jax.make_jaxpr(lambda x: dense(x, w, "xla"))(jnp.ones((256, 8))))


def test_blas_matmul_trains_to_the_same_losses_as_xla():
    """Three steps of the trainer's step with model.matmul=blas equal model.matmul=xla's."""
    from sandbox.bench.train_step import build_point
    from sandbox.core.step import make_train_step

    need_cpu_kernel()
    losses = {}
    for how in ("xla", "blas"):
        b = build_point("tiny", "ar", batch_size=4, seq_len=64,
                        overrides=["model.d_model=64", "model.n_layers=2", "model.n_heads=2",
                                   "model.n_kv_heads=2", f"model.matmul={how}"])
        assert b.model.cfg["matmul"] == how
        state = b.init_state()
        step = make_train_step(b.graphdef, b.objective, b.tx, 0.999, b.layout, state)
        jaxpr = str(jax.make_jaxpr(step)(state, np.zeros((4, 64), np.int32), jax.random.PRNGKey(0)))
        assert (C.MATMUL in jaxpr) == (how == "blas")
        rng, out = np.random.default_rng(0), []
        for i in range(3):
            batch = rng.integers(0, 256, (4, 64)).astype(np.int32)
            state, m = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(0), i))
            out.append(float(m["loss"]))
        losses[how] = out
    assert losses["blas"] == pytest.approx(losses["xla"], rel=2e-5)


def test_auto_matmul_picks_blas_only_with_mkl(monkeypatch):
    from sandbox.core.mesh import resolve_matmul

    need_cpu_kernel()
    assert resolve_matmul("auto", "float32", mkl_ok=lambda: True) == "blas"
    assert resolve_matmul("auto", "float32", mkl_ok=lambda: False) == "xla"
    assert resolve_matmul("auto", "bfloat16", mkl_ok=lambda: True) == "xla"
    want = "blas" if C.blas() == "mkl" else "xla"
    assert build_model(compose(TINY), ByteTokenizer(), 0).cfg["matmul"] == want


def test_an_unknown_matmul_or_blas_without_kernels_is_one_line(monkeypatch, tmp_path):
    from sandbox.models.transformer import resolve_matmul

    with pytest.raises(UserError, match="model.matmul: unknown value 'mkl'"):
        resolve_matmul("mkl")
    monkeypatch.setattr(C, "_STATE", {})
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setenv("SANDBOX_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(UserError) as e:
        resolve_matmul("blas")
    assert "\n" not in str(e.value) and "model.matmul=xla" in str(e.value)


def test_a_bad_blas_choice_is_reported(monkeypatch):
    monkeypatch.setattr(C, "_STATE", {})
    monkeypatch.setenv("SANDBOX_CPU_BLAS", "atlas")
    ok, why = C.status()
    assert not ok and "SANDBOX_CPU_BLAS=atlas" in why


# a fresh process: the sgemm is chosen once per process (the kernels' global pointer)
_OPENBLAS_PROBE = """
import numpy as np, jax, jax.numpy as jnp
from sandbox.models import attention as A, cpu_kernels as C
ok, why = C.status()
assert ok, why
assert C.blas() == "openblas", C.blas()
rng = np.random.default_rng(0)
a, b = (jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in ((300, 64), (64, 96)))
np.testing.assert_allclose(np.asarray(C.matmul(a, b)), np.asarray(a @ b), rtol=1e-5, atol=1e-4)
q, k, v = (jnp.asarray(rng.standard_normal((2, 70, 4, 16), dtype=np.float32)) for _ in range(3))
for causal in (True, False):
    want = A.attend(q, k, v, "causal" if causal else "bidirectional", impl="chunked")
    np.testing.assert_allclose(np.asarray(C.attention(q, k, v, causal)), np.asarray(want),
                               rtol=1e-4, atol=1e-5)
print("ok")
"""


def test_the_openblas_fallback_computes_the_same():
    """Where MKL is not installed (macOS, ARM) the kernels call OpenBLAS; on a machine with MKL
    the suite would otherwise never run that path."""
    import os
    import sys

    need_cpu_kernel()
    out = subprocess.run([sys.executable, "-c", _OPENBLAS_PROBE], capture_output=True, text=True,
                         env={**os.environ, "SANDBOX_CPU_BLAS": "openblas"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_mkl_is_used_where_it_is_installed():
    from importlib import metadata

    need_cpu_kernel()
    try:
        metadata.version("mkl")
    except metadata.PackageNotFoundError:
        pytest.skip("the mkl wheel is not installed (a dependency on Linux x86-64 only)")
    assert C.blas() == "mkl"


def test_cpu_kernels_are_refused_off_the_cpu_and_auto_avoids_them(monkeypatch):
    """On a GPU backend an explicit fused / blas is one line; auto never asks for the kernels."""
    from sandbox.core import mesh

    monkeypatch.setattr(mesh, "backend", lambda: "gpu")
    asked = []
    for fn, field, kernel in ((mesh.resolve_attention, "model.attention", "fused"),
                              (mesh.resolve_matmul, "model.matmul", "blas")):
        with pytest.raises(UserError) as e:
            fn(kernel, "float32")
        assert "\n" not in str(e.value) and f"{field}=auto" in str(e.value) and "gpu" in str(e.value)
        assert fn("auto", "float32", lambda f=field: asked.append(f) or True) not in ("fused", "blas")
    assert asked == []
