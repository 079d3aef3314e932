"""Multi-head latent attention (DeepSeek-V2, DeepSeek-AI 2024, Sec. 2.1).

Keys and values are not projected from the token directly but from a compressed latent
``c = RMSNorm(x W_dkv)`` of rank ``kv_rank``: ``k_nope = c W_uk``, ``v = c W_uv`` per head.
RoPE is decoupled: a single extra key part ``k_rope = RoPE(x W_kr)`` of width ``rope_dim``,
shared by all heads, is concatenated to every head's key, and each query gets a matching
rotary part. Scores use the scale 1/sqrt(head_dim + rope_dim). Queries are full rank by
default (``q_rank`` > 0: compressed like the keys, with their own RMSNorm).

Training and evaluation up-project the latent and call the shared attention kernels, so
every mask kind and the sliding ``window`` work as for ``Attention``.

**The cache stores the latent**: per layer ``(c [B, 1, S, kv_rank], k_rope [B, 1, S,
rope_dim])`` instead of ``2 * n_kv_heads * head_dim`` numbers per token. Decoding uses the
absorbed form: ``q_nope . (c W_uk) = (q_nope W_uk^T) . c``, so each query is mapped into the
latent space once and attends over the cached latents directly; the weighted latent is
up-projected by ``W_uv`` afterwards. Same logits as the full forward up to float rounding
(tests/test_zoo.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.models.attention import MASK_KINDS, _softmax, attend, block_masks, prefill_masks, step_masks
from sandbox.models.transformer import RMSNorm, _cfg_window, param, rope


class MultiHeadLatentAttention(nnx.Module):
    """x[B, L, D] -> [B, L, D] (see the module doc)."""

    supported_masks = MASK_KINDS

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs, kv_rank: int | None = None, q_rank: int = 0,
                 rope_dim: int | None = None, window: int | None = None):
        d, h, dh = cfg["d_model"], cfg["n_heads"], cfg["head_dim"]
        r = kv_rank or d // 2
        dr = rope_dim or max(2, dh // 2)
        if dr % 2 or r < 1 or q_rank < 0:
            raise UserError(f"model.mixer: rope_dim={dr} must be even, kv_rank={r} >= 1 and "
                            f"q_rank={q_rank} >= 0")
        std = 1.0 / math.sqrt(d)
        if q_rank:
            self.w_dq = param(rngs, (d, q_rank), ("embed", "q_rank"), std)
            self.q_norm = RMSNorm(q_rank)
            self.w_uq = param(rngs, (q_rank, h, dh + dr), ("q_rank", "heads", "head_dim"),
                              1.0 / math.sqrt(q_rank))
        else:
            self.wq = param(rngs, (d, h, dh + dr), ("embed", "heads", "head_dim"), std)
        self.w_dkv = param(rngs, (d, r), ("embed", "kv_rank"), std)
        self.kv_norm = RMSNorm(r)
        self.w_kr = param(rngs, (d, dr), ("embed", "head_dim"), std)
        self.w_uk = param(rngs, (r, h, dh), ("kv_rank", "heads", "head_dim"), 1.0 / math.sqrt(r))
        self.w_uv = param(rngs, (r, h, dh), ("kv_rank", "heads", "head_dim"), 1.0 / math.sqrt(r))
        self.wo = param(rngs, (h, dh, d), ("heads", "head_dim", "embed"), cfg["out_std"])
        self.n_heads, self.head_dim, self.kv_rank, self.rope_dim = h, dh, r, dr
        self.q_rank = q_rank
        self.impl, self.chunk, self.dtype = cfg["impl"], cfg["chunk"], cfg["dtype"]
        self.window = _cfg_window(cfg, window)

    # -- projections ---------------------------------------------------------------------------
    def _mm(self, x2, w):
        w = w[...]
        return x2 @ w.reshape(w.shape[0], -1).astype(self.dtype)

    def queries(self, x, tables):
        """x[B, L, D] -> (q_nope [B, L, H, Dh], q_rope [B, L, H, Dr] with RoPE)."""
        b, l, d = x.shape
        x2 = x.reshape(b * l, d)
        if self.q_rank:
            q = self._mm(self.q_norm(self._mm(x2, self.w_dq)), self.w_uq)
        else:
            q = self._mm(x2, self.wq)
        q = q.reshape(b, l, self.n_heads, self.head_dim + self.rope_dim)
        return q[..., : self.head_dim], rope(q[..., self.head_dim:], tables)

    def latent(self, x, tables):
        """x[B, L, D] -> (c [B, L, R], k_rope [B, L, 1, Dr] with RoPE): what the cache holds."""
        b, l, d = x.shape
        x2 = x.reshape(b * l, d)
        c = self.kv_norm(self._mm(x2, self.w_dkv)).reshape(b, l, self.kv_rank)
        kr = self._mm(x2, self.w_kr).reshape(b, l, 1, self.rope_dim)
        return c, rope(kr, tables)

    def out(self, o):
        """o[B, L, H, Dh] -> [B, L, D]."""
        b, l, h, dh = o.shape
        return (o.reshape(b * l, h * dh) @ self.wo[...].reshape(h * dh, -1).astype(self.dtype)
                ).reshape(b, l, -1)

    # -- training / evaluation: up-projected keys and values -----------------------------------
    def __call__(self, x, rope, mask_kind):
        tables = rope(self.rope_dim)
        b, l, _ = x.shape
        h, dh = self.n_heads, self.head_dim
        q_nope, q_rope = self.queries(x, tables)
        c, kr = self.latent(x, tables)
        c2 = c.reshape(b * l, self.kv_rank)
        k_nope = self._mm(c2, self.w_uk).reshape(b, l, h, dh)
        v = self._mm(c2, self.w_uv).reshape(b, l, h, dh)
        q = jnp.concatenate([q_nope, q_rope], axis=-1)
        k = jnp.concatenate([k_nope, jnp.broadcast_to(kr, (b, l, h, self.rope_dim))], axis=-1)
        return self.out(attend(q, k, v, mask_kind, self.impl, self.chunk, self.window))

    # -- decoding: absorbed queries against the cached latents ---------------------------------
    def init_cache(self, batch: int, size: int, dtype):
        return (jnp.zeros((batch, 1, size, self.kv_rank), dtype),
                jnp.zeros((batch, 1, size, self.rope_dim), dtype))

    def _new(self, x, rope, dtype):
        """Absorbed queries and the new tokens' cache entries (heads-major [B, 1, T, *])."""
        tables = rope(self.rope_dim)
        q_nope, q_rope = self.queries(x, tables)
        c, kr = self.latent(x, tables)
        q_lat = jnp.einsum("bthn,rhn->bthr", q_nope, self.w_uk[...].astype(self.dtype))
        return q_lat, q_rope, c[:, None].astype(dtype), kr.transpose(0, 2, 1, 3).astype(dtype)

    def _attend(self, q_lat, q_rope, segments):
        """Queries [B, T, H, R] / [B, T, H, Dr] over segments (c, k_rope, mask[T, S]) sharing
        one softmax -> [B, T, D]."""
        b, t, h, r = q_lat.shape
        scale = 1.0 / math.sqrt(self.head_dim + self.rope_dim)
        ql = (q_lat * scale).transpose(0, 2, 1, 3).reshape(b, 1, h * t, r)
        qr = (q_rope * scale).transpose(0, 2, 1, 3).reshape(b, 1, h * t, self.rope_dim)
        neg = jnp.finfo(jnp.float32).min
        scores = [jnp.where(jnp.tile(m, (h, 1)),
                            jnp.einsum("bkmr,bksr->bkms", ql, c, preferred_element_type=jnp.float32)
                            + jnp.einsum("bkmr,bksr->bkms", qr, kr, preferred_element_type=jnp.float32),
                            neg)
                  for c, kr, m in segments]
        p = _softmax(jnp.concatenate(scores, axis=-1))
        o, at = 0.0, 0
        for (c, _, _), s in zip(segments, scores):
            n = s.shape[-1]
            o = o + jnp.einsum("bkms,bksr->bkmr", p[..., at:at + n].astype(c.dtype), c)
            at += n
        o = o.reshape(b, h, t, r).transpose(0, 2, 1, 3)                     # [B, T, H, R]
        return self.out(jnp.einsum("bthr,rhv->bthv", o.astype(self.dtype),
                                   self.w_uv[...].astype(self.dtype)))

    def decode(self, x, rope, cache, pos):
        q_lat, q_rope, c, kr = self._new(x, rope, cache[0].dtype)
        mc, mn = prefill_masks(x.shape[1], cache[0].shape[2], pos, self.window)
        y = self._attend(q_lat, q_rope, [(cache[0], cache[1], mc), (c, kr, mn)])
        return y, (jax.lax.dynamic_update_slice(cache[0], c, (0, 0, pos, 0)),
                   jax.lax.dynamic_update_slice(cache[1], kr, (0, 0, pos, 0)))

    def decode_step(self, x, rope, cache, buf, start, i):
        q_lat, q_rope, c, kr = self._new(x, rope, buf[0].dtype)
        bc = jax.lax.dynamic_update_slice(buf[0], c, (0, 0, i, 0))
        bk = jax.lax.dynamic_update_slice(buf[1], kr, (0, 0, i, 0))
        mc, mb = step_masks(cache[0].shape[2], bc.shape[2], start, i, self.window)
        return self._attend(q_lat, q_rope, [(cache[0], cache[1], mc), (bc, bk, mb)]), (bc, bk)

    def decode_block(self, x, rope, cache, start, around: bool = False):
        q_lat, q_rope, c, kr = self._new(x, rope, cache[0].dtype)
        mc, mb = block_masks(x.shape[1], cache[0].shape[2], start, self.window, around)
        return self._attend(q_lat, q_rope, [(cache[0], cache[1], mc), (c, kr, mb)]), (c, kr)
