"""Attention kernels behind one function, selected by the backbone's ``attention`` option.

``attend(q, k, v, mask_kind, impl)`` with grouped-query shapes
``q[B, L, H, D]``, ``k, v[B, S, K, D]`` (``H % K == 0``) returns ``[B, L, H, D]``.

Implementations:
- ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``.
- ``cudnn``: the same call with cuDNN flash attention (GPU only, bf16/f16).
- ``chunked``: plain-JAX attention over query chunks. For a causal mask the chunk of
  queries ``[i*C, (i+1)*C)`` only reads keys ``[0, (i+1)*C)``: the blocks above the
  diagonal are never computed, which halves the FLOPs and, on XLA:CPU, is much faster
  than the fused-looking but unfused ``dot_product_attention`` (see ``sandbox.bench``).
  Chunk boundaries are static, so the loop unrolls at trace time into L/C matmuls.
- ``auto``: ``cudnn`` on GPU with a half-precision dtype, ``chunked`` elsewhere.

Softmax is computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sandbox.errors import UserError

MASK_KINDS = ("causal", "bidirectional")
IMPLS = ("auto", "xla", "chunked", "cudnn")


def resolve_impl(impl: str, dtype) -> str:
    if impl not in IMPLS:
        raise UserError(f"model.attention: unknown value '{impl}' (choose one of {', '.join(IMPLS)})")
    if impl != "auto":
        return impl
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "chunked"


def _dense(q, k, v, mask):
    """Reference attention with grouped heads. mask: bool[L, S] or None."""
    b, l, h, d = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, l, kh, h // kh, d)
    s = jnp.einsum("blkgd,bskd->bkgls", qg, k, preferred_element_type=jnp.float32)
    s = s * (1.0 / math.sqrt(d))
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkgls,bskd->blkgd", p, v)
    return o.reshape(b, l, h, d)


def _chunked(q, k, v, mask_kind: str, chunk: int):
    l, s = q.shape[1], k.shape[1]
    if mask_kind == "bidirectional":
        if l <= chunk:
            return _dense(q, k, v, None)
        outs = [_dense(q[:, i:i + chunk], k, v, None) for i in range(0, l, chunk)]
        return jnp.concatenate(outs, axis=1)
    # causal, queries aligned to the end of the keys (offset = s - l for cached prefixes)
    off = s - l
    outs = []
    for i in range(0, l, chunk):
        j = min(i + chunk, l)
        kv_end = off + j
        qi = jnp.arange(i, j)[:, None] + off
        ki = jnp.arange(kv_end)[None, :]
        outs.append(_dense(q[:, i:j], k[:, :kv_end], v[:, :kv_end], ki <= qi))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def attend(q, k, v, mask_kind: str, impl: str = "chunked", chunk: int = 64):
    """Grouped-query attention. q[B,L,H,D], k/v[B,S,K,D] -> [B,L,H,D]."""
    if mask_kind not in MASK_KINDS:
        raise UserError(f"mask kind '{mask_kind}' unknown (choose one of {', '.join(MASK_KINDS)})")
    if impl == "chunked":
        return _chunked(q, k, v, mask_kind, chunk)
    if impl in ("xla", "cudnn"):
        h, kh = q.shape[2], k.shape[2]
        if impl == "xla" and h != kh:  # xla path wants equal heads; repeat kv groups
            k = jnp.repeat(k, h // kh, axis=2)
            v = jnp.repeat(v, h // kh, axis=2)
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=(mask_kind == "causal"), implementation=impl
        )
    raise UserError(f"model.attention: unknown value '{impl}' (choose one of {', '.join(IMPLS)})")
