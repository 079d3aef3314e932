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
- ``fused``: a C++ kernel for XLA:CPU (``sandbox.models.cpu_kernels``, built on first
  use): one task per block of queries keeps its scores in cache from QK^T to PV, and
  the backward recomputes them from the row log-sum-exp. Causal and bidirectional masks
  without a window, float32; every other call (structured masks, windows, other dtypes)
  runs the ``chunked`` kernel.
- ``auto``: ``cudnn`` on GPU with a half-precision dtype; ``fused`` on a single CPU device
  when the kernel builds (float32); ``chunked`` elsewhere.

Softmax is computed in float32 whatever the input dtype. Values may have another head
width than queries and keys (multi-head latent attention); the output has the values' width.

Sliding windows (``window=w > 0``, Beltagy et al. 2020; Mistral): a causal query at
position i sees keys ``i - w < j <= i``, a bidirectional one ``|i - j| < w``, and a
structured mask is ANDed with the band ``|pos_i - pos_j| < w`` over the positions it
declares (``positions(l)``; the block-diffusion mask's two halves both carry 0..n-1).
The chunked kernel then reads only the keys inside the band of each query chunk. The
decoding masks (``prefill_masks``, ``step_masks``, ``block_masks``) apply the same band.

Structured masks (objects with ``kind`` and ``array(l, s)``): ``BlockDiffusionMask``
(one ``[l, s]`` pattern for the whole batch) and ``PromptMask`` (prefix-bidirectional
attention of conditional sequences, one ``[B, l, s]`` pattern per row). Both kernels take
either shape; cuDNN's fused kernel takes no arbitrary mask, so ``cudnn`` runs them as ``xla``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.models import cpu_kernels

MASK_KINDS = ("causal", "bidirectional", "block_diffusion", "prompt")


@dataclass(frozen=True)
class BlockDiffusionMask:
    """The BD3LM training mask (Arriola et al. 2025, Sec. 3.2 and Fig. 2) over the
    concatenation ``[x_t ; x_0]`` of a noised and a clean copy of an n-token sequence
    (length 2n; both halves carry positions 0..n-1). With blocks of ``block_size``:

    - noised block b sees noised block b (block-diagonal, bidirectional inside the block),
    - noised block b sees clean blocks < b (offset block-causal),
    - clean block b sees clean blocks <= b (block-causal), never a noised token.

    One forward pass then gives every noised block's prediction given the clean blocks
    before it. Hashable, so it is a static argument under jit."""

    block_size: int
    kind: str = "block_diffusion"

    def array(self, l: int, s: int):
        """bool[l, s] (query, key): True where attention is allowed. Needs l == s, even."""
        if l != s or l % 2:
            raise UserError(f"the block-diffusion mask needs the [x_t ; x_0] layout (even "
                            f"length, no cache); got {l} queries and {s} keys")
        n = l // 2
        i = jnp.arange(l)
        blk, clean = (i % n) // self.block_size, i >= n
        bq, bk, cq, ck = blk[:, None], blk[None, :], clean[:, None], clean[None, :]
        return ((~cq & ~ck & (bq == bk)) | (~cq & ck & (bk < bq)) | (cq & ck & (bk <= bq)))

    def positions(self, l: int):
        """Token positions of the l = 2n rows: 0..n-1 for x_t, then 0..n-1 for x_0."""
        return jnp.arange(l) % (l // 2)


@dataclass(frozen=True, eq=False)
class PromptMask:
    """Prefix-bidirectional attention over a conditional sequence ``[prompt ; canvas]``:

    - a prompt query sees the prompt keys only (both directions), never the canvas;
    - a canvas query sees every position (prompt and canvas, both directions).

    ``prompt`` is bool[B, L], True on prompt positions (the objectives' ``cond``), so the
    pattern is per row and needs no prompt length: it holds for any layout. Because the
    prompt never reads the canvas, its keys and values at every layer depend on the prompt
    alone, and a sampler can compute them once per sequence (``decode_block`` over the
    prompt) and run each denoising step over the canvas only, against them (the exact
    prompt cache; ``sandbox.samplers.mdm``). Identity-hashed (it holds an array)."""

    prompt: object
    kind: str = "prompt"

    def array(self, l: int, s: int):
        """bool[B, l, s] (row, query, key): True where attention is allowed."""
        p = jnp.asarray(self.prompt, bool)
        if l != s or p.ndim != 2 or p.shape[1] != l:
            raise UserError(f"the prompt mask needs one full sequence: got {l} queries, {s} keys and "
                            f"a prompt marker of shape {tuple(p.shape)}")
        return ~p[:, :, None] | p[:, None, :]

    def positions(self, l: int):
        return jnp.arange(l)


def mask_name(mask_kind) -> str:
    """The family name of a mask: the string itself, or a mask object's ``kind``."""
    return mask_kind if isinstance(mask_kind, str) else getattr(mask_kind, "kind", "?")
IMPLS = ("auto", "xla", "chunked", "cudnn", "fused")


def resolve_impl(impl: str, dtype) -> str:
    """Check ``model.attention``. ``auto`` is resolved by the build recipe for the backend it
    runs on (``sandbox.core.mesh.resolve_attention``); a backbone built directly with ``auto``
    gets the portable chunked kernel (the model never asks the backend)."""
    if impl not in IMPLS:
        raise UserError(f"model.attention: unknown value '{impl}' (choose one of {', '.join(IMPLS)})")
    if impl == "fused":
        cpu_kernels.require("model.attention=fused", "model.attention=chunked")
    return "chunked" if impl == "auto" else impl


def _softmax(s):
    """Softmax over the last axis. The max shift is a constant for autodiff (softmax is
    shift-invariant), which makes a backward pass XLA:CPU runs ~1.5x faster than
    ``jax.nn.softmax``'s."""
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def band(qpos, kpos, window: int, causal: bool):
    """bool[T, S]: the sliding-window band between query positions qpos[T] and key
    positions kpos[S] (``i - w < j <= i`` causal, ``|i - j| < w`` otherwise); all True
    when ``window`` is 0. Positions may be traced (decoding)."""
    qpos, kpos = jnp.asarray(qpos)[:, None], jnp.asarray(kpos)[None, :]
    if causal:
        ok = kpos <= qpos
        return ok & (kpos > qpos - window) if window else ok
    if not window:
        return jnp.ones((qpos.shape[0], kpos.shape[1]), bool)
    return jnp.abs(qpos - kpos) < window


def _mask_positions(mask_kind, n: int):
    pos = getattr(mask_kind, "positions", None)
    if pos is None:
        raise UserError(f"model.window does not support the '{mask_name(mask_kind)}' mask (it "
                        "declares no token positions); set model.window=0")
    return pos(n)


def _dense(q, k, v, mask):
    """Heads-major attention. q[B, K, M, D] (M = G query heads x L queries folded together),
    k[B, K, S, D], v[B, K, S, Dv], mask bool[M, S] or None -> [B, K, M, Dv]. 4-D batched
    matmuls only."""
    q = q * (1.0 / math.sqrt(q.shape[-1]))  # scale the [M, D] queries, not the [M, S] scores
    s = jnp.einsum("bkmd,bksd->bkms", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    # softmax(s) v = (e v) / sum(e), e = exp(s - max): normalising the [M, Dv] output instead
    # of the [M, S] probabilities saves a pass over the scores (forward and backward)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    o = jnp.einsum("bkms,bksd->bkmd", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (o / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype)


def _chunked(q, k, v, mask_kind: str, chunk: int, window: int = 0):
    """q[B, L, H, D], k[B, S, K, D], v[B, S, K, Dv] -> [B, L, H, Dv].

    Heads-major layout inside (one transpose in, one out): on XLA:CPU the batched matmuls
    over [B, K] are much faster than dot_generals over the [B, L, H, D] layout. The G query
    heads that share a key/value head are stacked along the query axis, so grouped-query
    attention is the same 4-D matmul as multi-head attention. With a sliding ``window``
    each query chunk reads only the keys of its band."""
    b, l, h, d = q.shape
    s, kh, dv = k.shape[1], k.shape[2], v.shape[3]
    g = h // kh
    qt = q.reshape(b, l, kh, g, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, D]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]

    def block(i, j, kv_start, kv_end, mask):
        qi = qt[:, :, :, i:j].reshape(b, kh, g * (j - i), d)
        if mask is not None and mask.ndim == 3:  # per-row mask [B, T, S] -> [B, 1, G*T, S]
            mask = jnp.tile(mask, (1, g, 1))[:, None]
        elif mask is not None:
            mask = jnp.tile(mask, (g, 1))
        return _dense(qi, kt[:, :, kv_start:kv_end], vt[:, :, kv_start:kv_end],
                      mask).reshape(b, kh, g, j - i, dv)

    if not isinstance(mask_kind, str):  # a structured mask object: dense mask rows per chunk
        full = mask_kind.array(l, s)
        if window:
            full = full & band(_mask_positions(mask_kind, l), _mask_positions(mask_kind, s),
                               window, causal=False)
        c = max(chunk, 512)
        outs = [block(i, min(i + c, l), 0, s, full[..., i:min(i + c, l), :]) for i in range(0, l, c)]
    elif mask_kind == "bidirectional":
        if window:  # chunks of queries read the keys within the window of the chunk
            outs = []
            for i in range(0, l, chunk):
                j = min(i + chunk, l)
                k0, k1 = max(0, i - window + 1), min(s, j + window - 1)
                outs.append(block(i, j, k0, k1, band(jnp.arange(i, j), jnp.arange(k0, k1),
                                                     window, causal=False)))
        else:
            c = max(chunk, 512)  # no FLOPs to skip: chunk only to bound memory on long inputs
            outs = [block(i, min(i + c, l), 0, s, None) for i in range(0, l, c)]
    else:
        off = s - l  # queries aligned to the end of the keys (cached prefixes)
        outs = []
        for i in range(0, l, chunk):
            j = min(i + chunk, l)
            kv_end = off + j
            kv_start = max(0, off + i - window + 1) if window else 0
            mask = band(jnp.arange(i, j) + off, jnp.arange(kv_start, kv_end), window, causal=True)
            outs.append(block(i, j, kv_start, kv_end, mask))
    o = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return o.transpose(0, 3, 1, 2, 4).reshape(b, l, h, dv)


def attend_segments(q, segments):
    """Attention of T queries over keys held in several buffers, without concatenating them.

    q[B, T, H, D]; segments: (k[B, K, S_i, D], v[B, K, S_i, Dv], mask bool[T, S_i]) per
    buffer (heads-major, the cache layout). The scores of all segments share one softmax.
    Decoding uses it to read a static cache and the token's own keys (or a small per-chunk
    buffer) as separate operands, so the large cache is never rewritten to be read.
    Returns [B, T, H, Dv]."""
    b, t, h, d = q.shape
    kh, dv = segments[0][0].shape[1], segments[0][1].shape[-1]
    g = h // kh
    qt = q.reshape(b, t, kh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, d)
    qt = qt * (1.0 / math.sqrt(d))
    neg = jnp.finfo(jnp.float32).min
    scores = [jnp.where(jnp.tile(mask, (g, 1)),
                        jnp.einsum("bkmd,bksd->bkms", qt, k, preferred_element_type=jnp.float32),
                        neg)
              for k, _, mask in segments]
    sizes = [s.shape[-1] for s in scores]
    p = _softmax(jnp.concatenate(scores, axis=-1) if len(scores) > 1 else scores[0])
    o, at = 0.0, 0
    for (_, v, _), n in zip(segments, sizes):
        o = o + jnp.einsum("bkms,bksd->bkmd", p[..., at:at + n].astype(v.dtype), v)
        at += n
    return o.reshape(b, kh, g, t, dv).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dv)


def prefill_masks(t: int, s: int, pos, window: int = 0):
    """Masks of T causal queries at positions pos..pos+T-1 over a cache of S slots holding
    the positions < pos, and over their own T keys: (bool[T, S], bool[T, T])."""
    qpos = pos + jnp.arange(t)
    cache = band(qpos, jnp.arange(s), window, causal=True) & (jnp.arange(s)[None, :] < pos)
    return cache, band(jnp.arange(t), jnp.arange(t), window, causal=True)


def step_masks(s: int, c: int, start, i, window: int = 0):
    """Masks of one query at position start + i over a read-only cache of S slots (the
    positions < start) and a C-slot chunk buffer (start..start+i): (bool[1, S], bool[1, C])."""
    qpos = jnp.reshape(start + i, (1,))
    cache = band(qpos, jnp.arange(s), window, causal=True) & (jnp.arange(s)[None, :] < start)
    return cache, band(qpos, start + jnp.arange(c), window, causal=True)


def block_masks(t: int, s: int, start, window: int = 0, around: bool = False):
    """Masks of a bidirectional block of T queries at start..start+T-1 over the cache
    positions < start (``around``: and those >= start + T, the dual cache of approximate
    diffusion decoding) and over the block itself: (bool[T, S], bool[T, T])."""
    qpos, kpos = start + jnp.arange(t), jnp.arange(s)[None, :]
    seen = (kpos < start) | (kpos >= start + t) if around else kpos < start
    cache = band(qpos, jnp.arange(s), window, causal=False) & seen
    return cache, band(jnp.arange(t), jnp.arange(t), window, causal=False)


def attend(q, k, v, mask_kind, impl: str = "chunked", chunk: int = 64, window: int = 0):
    """Grouped-query attention. q[B,L,H,D], k[B,S,K,D], v[B,S,K,Dv] -> [B,L,H,Dv].
    ``mask_kind``: a MASK_KINDS string, or a mask object with ``kind`` and
    ``array(l, s) -> bool[l, s]`` or ``bool[B, l, s]``. ``window``: sliding-window width (0: off)."""
    if mask_name(mask_kind) not in MASK_KINDS:
        raise UserError(f"mask kind '{mask_kind}' unknown (choose one of {', '.join(MASK_KINDS)})")
    plain = isinstance(mask_kind, str) and mask_kind in ("causal", "bidirectional")
    if impl == "fused" and plain and not window:
        if cpu_kernels.supports(q, k, v, mask_kind == "causal"):
            return cpu_kernels.attention(q, k, v, mask_kind == "causal")
    if impl in ("chunked", "fused"):
        return _chunked(q, k, v, mask_kind, chunk, window)
    if impl in ("xla", "cudnn"):
        h, kh, d, dv = q.shape[2], k.shape[2], q.shape[3], v.shape[3]
        mask, local = None, None
        if not isinstance(mask_kind, str):  # cuDNN's fused kernel takes no arbitrary mask
            mask, impl = mask_kind.array(q.shape[1], k.shape[1]), "xla"
            if window:
                mask = mask & band(_mask_positions(mask_kind, q.shape[1]),
                                   _mask_positions(mask_kind, k.shape[1]), window, causal=False)
            mask = mask[:, None] if mask.ndim == 3 else mask[None, None]
        elif window:
            local = (window - 1, 0 if mask_kind == "causal" else window - 1)
        if impl == "xla" and h != kh:  # xla path wants equal heads; repeat kv groups
            k = jnp.repeat(k, h // kh, axis=2)
            v = jnp.repeat(v, h // kh, axis=2)
        if dv > d:
            raise UserError(f"model.attention={impl}: value width {dv} exceeds the query width {d}; "
                            "use model.attention=chunked")
        if dv < d:  # the fused call wants one head width: pad the values, slice the output
            v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, d - dv)))
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=(mask_kind == "causal"), local_window_size=local,
            implementation=impl
        )
        return out[..., :dv]
    raise UserError(f"model.attention: unknown value '{impl}' (choose one of {', '.join(IMPLS)})")
