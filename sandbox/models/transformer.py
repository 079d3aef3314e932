"""The default backbone: a pre-norm Transformer in Flax NNX.

``Transformer(tokens[B, L], mask_kind=...) -> logits[B, L, V]``.

RoPE positions, RMSNorm, SwiGLU MLP and grouped-query attention (``n_kv_heads`` divides
``n_heads``; ``n_kv_heads == 1`` is multi-query). The mask kind (``causal``,
``bidirectional`` or a ``BlockDiffusionMask``) is a call argument chosen by the objective,
so one backbone class serves every objective; it knows nothing of losses or noise.

The backbone protocol (what objectives and samplers call; a new backbone provides it):
- ``__call__(tokens[B, L], mask_kind=..., positions=None) -> logits[B, L, V]``,
  ``supported_masks``, ``vocab_size``, ``max_len``, ``cfg`` (``d_model``, ``n_layers``),
  ``n_params``.
- Cached decoding (optional; samplers fall back to full forwards without it):
  ``init_cache(B, S)``, ``decode`` (prefill, causal), ``decode_step`` (one AR token against
  a read-only cache plus a chunk buffer), ``decode_block`` (a bidirectional block against
  a read-only cache: block diffusion) and ``commit`` (write new keys/values into the cache).

Design choices:
- Every parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata (``vocab``,
  ``embed``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``); the mesh module maps those
  names to mesh axes. No eager sharding at construction, so a model builds anywhere.
- The vocabulary is padded to a multiple of 128 for matmul-friendly shapes; the padded
  logits are set to a large negative value so they carry no probability.
- ``dtype`` is the compute dtype; parameters stay float32.
- Attention kernels live in :mod:`sandbox.models.attention` (``attention=`` option).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sandbox.errors import UserError
from sandbox.models.attention import attend, attend_cached, attend_segments, resolve_impl


def _param(rngs: nnx.Rngs, shape, axes, std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), logical_axes=axes)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, statistics in float32.  x[..., D] -> [..., D]."""

    def __init__(self, dim: int, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("embed",))
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


def rope_tables(positions, head_dim: int, base: float):
    """(cos, sin) [B, L, 1, Dh/2] for rotary embeddings; computed once per forward pass."""
    inv = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    ang = positions[..., None].astype(jnp.float32) * inv  # [B, L, Dh/2]
    return jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]


def rope(x, tables):
    """Rotary embedding (Su et al. 2021), rotate-half form. x[B, L, H, Dh]."""
    cos, sin = tables
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE.  x[B, L, D] -> [B, L, D]."""

    def __init__(self, d_model, n_heads, n_kv_heads, head_dim, *, rope_base, impl, chunk,
                 dtype, rngs, out_std):
        del rope_base  # the tables are built once per forward pass by the Transformer
        std = 1.0 / math.sqrt(d_model)
        self.wq = _param(rngs, (d_model, n_heads, head_dim), ("embed", "heads", "head_dim"), std)
        self.wk = _param(rngs, (d_model, n_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), std)
        self.wv = _param(rngs, (d_model, n_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), std)
        self.wo = _param(rngs, (n_heads, head_dim, d_model), ("heads", "head_dim", "embed"), out_std)
        self.impl, self.chunk, self.dtype = impl, chunk, dtype

    def qkv(self, x, tables):
        """x[B, L, D] -> q[B, L, H, Dh], k/v[B, L, K, Dh] (RoPE applied to q and k)."""
        b, l, d = x.shape
        x2 = x.reshape(b * l, d)  # 2-D matmuls: XLA:CPU's backward is ~2x faster than 3-D

        def proj(w):
            w = w[...]
            return (x2 @ w.reshape(d, -1).astype(self.dtype)).reshape(b, l, w.shape[1], w.shape[2])

        q, k, v = proj(self.wq), proj(self.wk), proj(self.wv)
        return rope(q, tables), rope(k, tables), v

    def out(self, o):
        """o[B, L, H, Dh] -> [B, L, D]."""
        b, l, h, dh = o.shape
        w = self.wo[...].reshape(h * dh, -1).astype(self.dtype)
        return (o.reshape(b * l, h * dh) @ w).reshape(b, l, -1)

    def __call__(self, x, tables, mask_kind):
        q, k, v = self.qkv(x, tables)
        return self.out(attend(q, k, v, mask_kind, self.impl, self.chunk))

    def decode(self, x, tables, cache, pos):
        """Causal step with a static KV cache. x[B, T, D] at positions pos..pos+T-1;
        cache = (k, v) each [B, K, S, Dh]. Returns ([B, T, D], new cache)."""
        q, k, v = self.qkv(x, tables)
        # the cache is heads-major [B, K, S, Dh]: only the T new rows are transposed per step
        k, v = (a.transpose(0, 2, 1, 3).astype(cache[0].dtype) for a in (k, v))
        o = attend_cached(q, cache[0], cache[1], k, v, pos)
        ck = jax.lax.dynamic_update_slice(cache[0], k, (0, 0, pos, 0))
        cv = jax.lax.dynamic_update_slice(cache[1], v, (0, 0, pos, 0))
        return self.out(o), (ck, cv)

    def decode_step(self, x, tables, cache, buf, start, i):
        """One token x[B, 1, D] at position start + i. ``cache`` = (k, v)[B, K, S, Dh] holds
        the positions < start and is only read; ``buf`` = (k, v)[B, K, C, Dh] holds
        start..start+i-1 and gets this token's k, v at slot i. Returns ([B, 1, D], buf)."""
        q, k, v = self.qkv(x, tables)
        k, v = (a.transpose(0, 2, 1, 3).astype(buf[0].dtype) for a in (k, v))
        bk = jax.lax.dynamic_update_slice(buf[0], k, (0, 0, i, 0))
        bv = jax.lax.dynamic_update_slice(buf[1], v, (0, 0, i, 0))
        s, c = cache[0].shape[2], bk.shape[2]
        o = attend_segments(q, [(cache[0], cache[1], jnp.arange(s)[None, :] < start),
                                (bk, bv, jnp.arange(c)[None, :] <= i)])
        return self.out(o), (bk, bv)

    def decode_block(self, x, tables, cache, start):
        """T tokens x[B, T, D] at positions start..start+T-1 that see each other in both
        directions and the cache positions < start (read-only): the block step of block
        diffusion. Returns ([B, T, D], (k, v) [B, K, T, Dh] of the T tokens)."""
        q, k, v = self.qkv(x, tables)
        k, v = (a.transpose(0, 2, 1, 3).astype(cache[0].dtype) for a in (k, v))
        t, s = x.shape[1], cache[0].shape[2]
        seen = jnp.broadcast_to(jnp.arange(s)[None, :] < start, (t, s))
        o = attend_segments(q, [(cache[0], cache[1], seen), (k, v, jnp.ones((t, t), bool))])
        return self.out(o), (k, v)


class SwiGLU(nnx.Module):
    """SwiGLU MLP (Shazeer 2020).  x[B, L, D] -> [B, L, D]."""

    def __init__(self, d_model, d_ff, *, dtype, rngs, out_std):
        std = 1.0 / math.sqrt(d_model)
        self.w_gate = _param(rngs, (d_model, d_ff), ("embed", "mlp"), std)
        self.w_up = _param(rngs, (d_model, d_ff), ("embed", "mlp"), std)
        self.w_down = _param(rngs, (d_ff, d_model), ("mlp", "embed"), out_std)
        self.dtype = dtype

    def __call__(self, x):
        dt, shape = self.dtype, x.shape
        x = x.reshape(-1, shape[-1])  # 2-D matmuls (see Attention.qkv)
        h = jax.nn.silu(x @ self.w_gate[...].astype(dt)) * (x @ self.w_up[...].astype(dt))
        return (h @ self.w_down[...].astype(dt)).reshape(shape)


class Block(nnx.Module):
    def __init__(self, cfg: dict, rngs: nnx.Rngs):
        out_std = 1.0 / math.sqrt(cfg["d_model"]) / math.sqrt(2 * cfg["n_layers"])
        self.norm1 = RMSNorm(cfg["d_model"])
        self.attn = Attention(cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"],
                              rope_base=cfg["rope_base"], impl=cfg["impl"], chunk=cfg["chunk"],
                              dtype=cfg["dtype"], rngs=rngs, out_std=out_std)
        self.norm2 = RMSNorm(cfg["d_model"])
        self.mlp = SwiGLU(cfg["d_model"], cfg["d_ff"], dtype=cfg["dtype"], rngs=rngs, out_std=out_std)

    def __call__(self, x, tables, mask_kind):
        x = x + self.attn(self.norm1(x), tables, mask_kind)
        return x + self.mlp(self.norm2(x))

    def decode(self, x, tables, cache, pos):
        a, cache = self.attn.decode(self.norm1(x), tables, cache, pos)
        x = x + a
        return x + self.mlp(self.norm2(x)), cache

    def decode_step(self, x, tables, cache, buf, start, i):
        a, buf = self.attn.decode_step(self.norm1(x), tables, cache, buf, start, i)
        x = x + a
        return x + self.mlp(self.norm2(x)), buf

    def decode_block(self, x, tables, cache, start):
        a, kv = self.attn.decode_block(self.norm1(x), tables, cache, start)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class Transformer(nnx.Module):
    """Pre-norm Transformer backbone. tokens[B, L] int -> logits[B, L, V] float32.

    Args:
      vocab_size: the tokenizer's vocabulary (special tokens included).
      d_model, n_layers, n_heads: width, depth and query heads.
      n_kv_heads: key/value heads (GQA); defaults to ``n_heads`` (plain multi-head).
      d_ff: SwiGLU hidden width; defaults to 8/3 d_model rounded up to a multiple of 64.
      max_len: longest sequence the model is asked to handle (checked at call time).
      attention: ``auto`` | ``xla`` | ``chunked`` | ``cudnn`` (see ``attention.py``).
      attn_chunk: query chunk length for ``chunked``.
      dtype: compute dtype name (``float32`` or ``bfloat16``).
      tie_embeddings: share the input embedding with the output projection.
    """

    supported_masks = ("causal", "bidirectional", "block_diffusion")

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 n_kv_heads: int | None = None, d_ff: int | None = None, max_len: int = 1024,
                 rope_base: float = 10000.0, attention: str = "auto", attn_chunk: int = 64,
                 dtype: str = "float32", tie_embeddings: bool = False, rngs: nnx.Rngs,
                 name: str = "transformer"):
        n_kv_heads = n_kv_heads or n_heads
        if d_model % n_heads:
            raise UserError(f"model.n_heads={n_heads} must divide model.d_model={d_model}")
        if n_heads % n_kv_heads:
            raise UserError(f"model.n_kv_heads={n_kv_heads} must divide model.n_heads={n_heads}")
        try:
            cdt = jnp.dtype(dtype)
        except TypeError:
            raise UserError(f"model.dtype: unknown dtype '{dtype}' (use float32 or bfloat16)") from None
        d_ff = d_ff or 64 * math.ceil(8 * d_model / 3 / 64)
        self.vocab_size = vocab_size
        self.padded_vocab = 128 * math.ceil(vocab_size / 128)
        self.max_len, self.dtype, self.tie = max_len, cdt, tie_embeddings
        self.name = name
        cfg = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                   head_dim=d_model // n_heads, d_ff=d_ff, rope_base=rope_base,
                   impl=resolve_impl(attention, cdt), chunk=attn_chunk, dtype=cdt)
        self.cfg = cfg
        self.embed = _param(rngs, (self.padded_vocab, d_model), ("vocab", "embed"), 1.0)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(n_layers)])
        self.norm = RMSNorm(d_model)
        if not tie_embeddings:
            self.head = _param(rngs, (d_model, self.padded_vocab), ("embed", "vocab"),
                               1.0 / math.sqrt(d_model))

    def hidden(self, tokens, *, mask_kind: str = "causal", positions=None):
        """tokens[B, L] -> final normalised hidden states [B, L, D]."""
        b, l = tokens.shape
        if positions is None and l > self.max_len:  # given positions: the caller checks
            raise UserError(f"train.seq_len={l} exceeds model.max_len={self.max_len}; "
                            "raise model.max_len or shorten the sequence")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(l), (b, l))
        x = self.embed[...][tokens].astype(self.dtype)
        tables = rope_tables(positions, self.cfg["head_dim"], self.cfg["rope_base"])
        for blk in self.blocks:
            x = blk(x, tables, mask_kind)
        return self.norm(x)

    def logits(self, h):
        """Hidden [B, L, D] -> logits [B, L, V] float32, padded vocabulary removed."""
        w = self.embed[...].T if self.tie else self.head[...]
        if self.tie:
            h = h / math.sqrt(h.shape[-1])
        b, l, d = h.shape
        out = jnp.dot(h.reshape(b * l, d), w.astype(self.dtype), preferred_element_type=jnp.float32)
        return out.reshape(b, l, -1)[..., : self.vocab_size]

    def __call__(self, tokens, *, mask_kind: str = "causal", positions=None, t=None):
        """tokens[B, L] -> logits[B, L, V]. ``t`` (diffusion time) is ignored: this backbone
        is not time-conditioned (MDLM shows it is unnecessary for absorbing diffusion)."""
        del t
        return self.logits(self.hidden(tokens, mask_kind=mask_kind, positions=positions))

    # -- autoregressive decoding with a preallocated static KV cache --------------------------
    def init_cache(self, batch: int, max_len: int):
        """Zeroed KV cache: per layer (k, v), each [B, K, max_len, Dh] (heads-major, the layout
        attention reads, so a decode step never transposes the whole cache)."""
        shape = (batch, self.cfg["n_kv_heads"], max_len, self.cfg["head_dim"])
        return [(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.blocks]

    def decode(self, tokens, cache, pos):
        """Causal forward of tokens[B, T] at positions pos..pos+T-1 against the cache.
        Returns (logits[B, T, V], cache). T = prompt length for prefill, 1 per step after."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(pos + jnp.arange(t), (b, t))
        tables = rope_tables(positions, self.cfg["head_dim"], self.cfg["rope_base"])
        x = self.embed[...][tokens].astype(self.dtype)
        new = []
        for blk, c in zip(self.blocks, cache):
            x, c = blk.decode(x, tables, c, pos)
            new.append(c)
        return self.logits(self.norm(x)), new

    def decode_step(self, tokens, cache, buf, start, i):
        """One new token tokens[B, 1] at position start + i, for token-by-token decoding in
        chunks: ``cache`` (``init_cache``) holds the positions < start and is only read;
        ``buf`` (``init_cache(B, C)``) holds start..start+i-1 and receives this token.
        ``commit`` copies a full buffer into the cache once per chunk. Returns
        (logits[B, 1, V], buf).

        Why two buffers: a step that both reads and updates one loop-carried cache makes
        XLA:CPU copy the whole cache every step (its copy insertion cannot prove the read
        happens first), so the step cost grew with the cache length. Here the large cache is
        loop-invariant inside a chunk and only the C-slot buffer is rewritten."""
        b = tokens.shape[0]
        positions = jnp.broadcast_to(start + i, (b, 1))
        tables = rope_tables(positions, self.cfg["head_dim"], self.cfg["rope_base"])
        x = self.embed[...][tokens].astype(self.dtype)
        new = []
        for blk, c, bf in zip(self.blocks, cache, buf):
            x, bf = blk.decode_step(x, tables, c, bf, start, i)
            new.append(bf)
        return self.logits(self.norm(x)), new

    def decode_block(self, tokens, cache, start):
        """Block diffusion's step: tokens[B, T] at positions start..start+T-1 see each other
        (bidirectional) and the cache positions < start (read-only). Returns
        (logits[B, T, V], kv) where kv holds the T tokens' keys/values per layer, for
        ``commit`` once the block is final (its clean tokens' kv, as BD3LM's exact cache)."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(start + jnp.arange(t), (b, t))
        tables = rope_tables(positions, self.cfg["head_dim"], self.cfg["rope_base"])
        x = self.embed[...][tokens].astype(self.dtype)
        kvs = []
        for blk, c in zip(self.blocks, cache):
            x, kv = blk.decode_block(x, tables, c, start)
            kvs.append(kv)
        return self.logits(self.norm(x)), kvs

    @staticmethod
    def commit(cache, buf, start):
        """Write the chunk buffer (positions start..start+C-1) into the cache."""
        return [tuple(jax.lax.dynamic_update_slice(c, bf, (0, 0, start, 0)) for c, bf in zip(cl, bl))
                for cl, bl in zip(cache, buf)]

    def n_params(self, non_embedding: bool = True) -> int:
        state = nnx.state(self, nnx.Param)
        total = sum(x.size for x in jax.tree.leaves(state))
        if non_embedding:
            total -= self.embed[...].size + (0 if self.tie else self.head[...].size)
        return int(total)
