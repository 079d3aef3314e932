"""The default backbone: a pre-norm Transformer in Flax NNX, with swappable token mixer and MLP.

``Transformer(tokens[B, L], mask_kind=...) -> logits[B, L, V]``.

RoPE positions, RMSNorm, SwiGLU MLP and grouped-query attention (``n_kv_heads`` divides
``n_heads``; ``n_kv_heads == 1`` is multi-query). The mask kind (``causal``,
``bidirectional``, a ``BlockDiffusionMask`` or a ``PromptMask``) is a call argument chosen
by the objective, so one backbone class serves every objective; it knows nothing of losses
or noise.

The backbone protocol (what objectives and samplers call; a new backbone provides it):
- ``__call__(tokens[B, L], mask_kind=..., positions=None, t=None) -> logits[B, L, V]``,
  ``supported_masks``, ``vocab_size``, ``max_len``, ``cfg`` (``d_model``, ``n_layers``),
  ``n_params``.
- Cached decoding (optional; samplers fall back to full forwards without it):
  ``init_cache(B, S)``, ``decode`` (prefill, causal), ``decode_step`` (one AR token against
  a read-only cache plus a chunk buffer), ``decode_block`` (a bidirectional block against
  a read-only cache: block diffusion) and ``commit`` (write new keys/values into the cache).
  ``decode_block`` also serves the prompt cache of masked diffusion under a ``PromptMask``:
  over the prompt at start 0 with an empty cache (``init_cache(B, 0)``) it returns the
  prompt's per-layer keys/values, and over the canvas against them the canvas rows of the
  prompt-mask forward (``sandbox.samplers.mdm``).
- Recurrent decoding (optional, ``recurrent = True``: a state of fixed size instead of a
  cache): ``prefill(tokens[B, P]) -> (logits, state)`` and ``step(tokens[B, 1], state, pos)
  -> (logits[B, 1, V], state)``; ``samplers/ar.py`` prefers it when present.
- Auxiliary losses (optional): layers call ``sandbox.models.aux.record(value, weight)``
  during a forward pass; objectives add what was recorded to their loss (``aux.py``).

Composition: a ``Block`` is ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``. The mixer
and the MLP are built by factories passed to the Transformer (``mixer=``, ``mlp=``; in a
config a ``_partial_: true`` node), each called as ``factory(cfg, rngs=rngs)`` with the
shared ``cfg`` dict below. A variant is therefore one class plus one YAML file
(``conf/model/tiny_*.yaml``; ``docs/extending.md`` walks through one).

- Mixer protocol: ``__call__(x[B, L, D], rope, mask_kind) -> [B, L, D]`` (``rope(width)``
  gives the rotary tables of this pass), ``supported_masks``; for cached decoding
  ``init_cache(B, S, dtype)`` (a tuple of arrays ``[B, *, S, ...]``, the slot axis third),
  ``decode(x, rope, cache, pos)``, ``decode_step(x, rope, cache, buf, start, i)``,
  ``decode_block(x, rope, cache, start)`` (optionally ``around=`` for a cache read on both
  sides of the block: the dual cache of masked-diffusion decoding); for recurrent decoding
  ``recurrent = True``,
  ``prefill(x, rope) -> (y, state)`` and ``step(x, rope, state, pos) -> (y, state)``.
  Mixers: ``Attention`` (GQA/MQA, sliding window), ``mla.MultiHeadLatentAttention``,
  ``gla.GatedLinearAttention``.
- MLP protocol: ``__call__(x[B, L, D]) -> [B, L, D]``; optional ``decode(x)`` used by the
  decoding paths (the MoE routes without capacity there). MLPs: ``SwiGLU``,
  ``moe.MoE``, ``relu2.ReLU2`` (the worked example).
- ``cfg`` keys: ``d_model``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``head_dim``,
  ``d_ff``, ``rope_base``, ``impl``, ``chunk``, ``dtype``, ``window``, ``max_len``,
  ``out_std`` (init scale of the projections back into the residual stream).

Options on every variant: ``window`` (sliding-window attention for the attention mixers)
and ``time_conditioning`` (adaLN from the diffusion time; see ``TimeEmbedding``).

Design choices:
- Every parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata (``vocab``,
  ``embed``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``; variants add ``experts``,
  ``kv_rank``); the mesh module maps those names to mesh axes (unknown names: replicated).
  No eager sharding at construction, so a model builds anywhere.
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

from sandbox.core.errors import UserError
from sandbox.models import cpu_kernels
from sandbox.models.attention import (
    MASK_KINDS,
    attend,
    attend_segments,
    block_masks,
    mask_name,
    prefill_masks,
    resolve_impl,
    step_masks,
)

MATMULS = ("auto", "xla", "blas")


def resolve_matmul(how: str) -> str:
    """Check ``model.matmul``. ``auto`` is resolved by the build recipe for the machine it runs
    on (``sandbox.core.mesh.resolve_matmul``); a backbone built directly with ``auto`` gets
    XLA's dot."""
    if how not in MATMULS:
        raise UserError(f"model.matmul: unknown value '{how}' (choose one of {', '.join(MATMULS)})")
    if how == "blas":
        cpu_kernels.require("model.matmul=blas", "model.matmul=xla")
    return "xla" if how == "auto" else how


def dense(x, w, how: str):
    """x[N, D] @ w[D, F]: XLA's dot, or with ``how="blas"`` the CPU kernel's sgemm
    (``cpu_kernels.matmul``) for float32 operands of at least 256 rows (a train step or a full
    forward; decoding steps of a few rows keep XLA's dot)."""
    if how == "blas" and x.shape[0] >= 256 and x.dtype == w.dtype == jnp.float32:
        return cpu_kernels.matmul(x, w)
    return x @ w


def param(rngs: nnx.Rngs, shape, axes, std: float) -> nnx.Param:
    """A float32 ``nnx.Param`` drawn from N(0, std^2) with its logical axis names."""
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32), logical_axes=axes)


def zeros_param(shape, axes) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.float32), logical_axes=axes)


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
    """(cos, sin) [B, L, 1, Dh] for rotary embeddings, full width: ``cos`` repeats the Dh/2
    frequencies' cosines over both halves, ``sin`` carries the rotate-half sign (``-sin`` on
    the first half, ``+sin`` on the second). Computed once per forward pass."""
    inv = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    ang = positions[..., None].astype(jnp.float32) * inv  # [B, L, Dh/2]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    return (jnp.concatenate([cos, cos], -1)[:, :, None, :],
            jnp.concatenate([-sin, sin], -1)[:, :, None, :])


def rope(x, tables):
    """Rotary embedding (Su et al. 2021), rotate-half form. x[B, L, H, Dh].

    ``[x1 cos - x2 sin, x2 cos + x1 sin]`` written as ``x cos + roll(x, Dh/2) sin`` with the
    signed full-width tables: one elementwise pass and no concatenation of the two halves,
    which XLA:CPU fused poorly with the projections and the heads-major transposes (the
    train step at the tiny shape ~4% faster; docs/design.md, "Training speed")."""
    cos, sin = tables
    xf = x.astype(jnp.float32)
    return (xf * cos + jnp.roll(xf, xf.shape[-1] // 2, axis=-1) * sin).astype(x.dtype)


class Rope:
    """The rotary tables of one forward pass, built once per rotary width: ``rope(width)``."""

    def __init__(self, positions, base: float):
        self.positions, self.base, self._tables = positions, base, {}

    def __call__(self, width: int):
        if width not in self._tables:
            self._tables[width] = rope_tables(self.positions, width, self.base)
        return self._tables[width]


def _cfg_window(cfg: dict, window) -> int:
    w = int(cfg.get("window", 0) if window is None else window)
    if w < 0:
        raise UserError(f"model.window={w} must be >= 0 (0: full attention)")
    return w


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE.  x[B, L, D] -> [B, L, D].

    ``n_kv_heads`` key/value heads serve ``n_heads`` query heads (GQA, Ainslie et al. 2023;
    1: multi-query, Shazeer 2019). ``window`` > 0: sliding-window attention (a causal query
    sees the ``window`` latest positions, itself included; a bidirectional one those less
    than ``window`` away), in training and in every decoding path."""

    supported_masks = MASK_KINDS

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs, window: int | None = None):
        d, h, kh, dh = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
        std = 1.0 / math.sqrt(d)
        self.wq = param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), std)
        self.wk = param(rngs, (d, kh, dh), ("embed", "kv_heads", "head_dim"), std)
        self.wv = param(rngs, (d, kh, dh), ("embed", "kv_heads", "head_dim"), std)
        self.wo = param(rngs, (h, dh, d), ("heads", "head_dim", "embed"), cfg["out_std"])
        self.impl, self.chunk, self.dtype = cfg["impl"], cfg["chunk"], cfg["dtype"]
        self.matmul = cfg.get("matmul", "xla")
        self.n_kv_heads, self.head_dim = kh, dh
        self.window = _cfg_window(cfg, window)

    def qkv(self, x, tables):
        """x[B, L, D] -> q[B, L, H, Dh], k/v[B, L, K, Dh] (RoPE applied to q and k)."""
        b, l, d = x.shape
        x2 = x.reshape(b * l, d)  # 2-D matmuls: XLA:CPU's backward is ~2x faster than 3-D

        def proj(w):
            w = w[...]
            out = dense(x2, w.reshape(d, -1).astype(self.dtype), self.matmul)
            return out.reshape(b, l, w.shape[1], w.shape[2])

        q, k, v = proj(self.wq), proj(self.wk), proj(self.wv)
        return rope(q, tables), rope(k, tables), v

    def out(self, o):
        """o[B, L, H, Dh] -> [B, L, D]."""
        b, l, h, dh = o.shape
        w = self.wo[...].reshape(h * dh, -1).astype(self.dtype)
        return dense(o.reshape(b * l, h * dh), w, self.matmul).reshape(b, l, -1)

    def __call__(self, x, rope, mask_kind):
        q, k, v = self.qkv(x, rope(self.head_dim))
        return self.out(attend(q, k, v, mask_kind, self.impl, self.chunk, self.window))

    def init_cache(self, batch: int, size: int, dtype):
        shape = (batch, self.n_kv_heads, size, self.head_dim)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def _new_kv(self, x, rope, dtype):
        q, k, v = self.qkv(x, rope(self.head_dim))
        # the cache is heads-major [B, K, S, Dh]: only the T new rows are transposed per step
        return q, *(a.transpose(0, 2, 1, 3).astype(dtype) for a in (k, v))

    def decode(self, x, rope, cache, pos):
        """Causal step with a static KV cache. x[B, T, D] at positions pos..pos+T-1;
        cache = (k, v) each [B, K, S, Dh]. Returns ([B, T, D], new cache)."""
        q, k, v = self._new_kv(x, rope, cache[0].dtype)
        mc, mn = prefill_masks(x.shape[1], cache[0].shape[2], pos, self.window)
        o = attend_segments(q, [(cache[0], cache[1], mc), (k, v, mn)])
        ck = jax.lax.dynamic_update_slice(cache[0], k, (0, 0, pos, 0))
        cv = jax.lax.dynamic_update_slice(cache[1], v, (0, 0, pos, 0))
        return self.out(o), (ck, cv)

    def decode_step(self, x, rope, cache, buf, start, i):
        """One token x[B, 1, D] at position start + i. ``cache`` = (k, v)[B, K, S, Dh] holds
        the positions < start and is only read; ``buf`` = (k, v)[B, K, C, Dh] holds
        start..start+i-1 and gets this token's k, v at slot i. Returns ([B, 1, D], buf)."""
        q, k, v = self._new_kv(x, rope, buf[0].dtype)
        bk = jax.lax.dynamic_update_slice(buf[0], k, (0, 0, i, 0))
        bv = jax.lax.dynamic_update_slice(buf[1], v, (0, 0, i, 0))
        mc, mb = step_masks(cache[0].shape[2], bk.shape[2], start, i, self.window)
        o = attend_segments(q, [(cache[0], cache[1], mc), (bk, bv, mb)])
        return self.out(o), (bk, bv)

    def decode_block(self, x, rope, cache, start, around: bool = False):
        """T tokens x[B, T, D] at positions start..start+T-1 that see each other in both
        directions and the cache positions < start (read-only): the block step of block
        diffusion; ``around``: also the cache positions after the block (a dual cache).
        Returns ([B, T, D], (k, v) [B, K, T, Dh] of the T tokens)."""
        q, k, v = self._new_kv(x, rope, cache[0].dtype)
        mc, mb = block_masks(x.shape[1], cache[0].shape[2], start, self.window, around)
        o = attend_segments(q, [(cache[0], cache[1], mc), (k, v, mb)])
        return self.out(o), (k, v)


class SwiGLU(nnx.Module):
    """SwiGLU MLP (Shazeer 2020).  x[B, L, D] -> [B, L, D]."""

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs, d_ff: int | None = None):
        d, f = cfg["d_model"], d_ff or cfg["d_ff"]
        std = 1.0 / math.sqrt(d)
        self.w_gate = param(rngs, (d, f), ("embed", "mlp"), std)
        self.w_up = param(rngs, (d, f), ("embed", "mlp"), std)
        self.w_down = param(rngs, (f, d), ("mlp", "embed"), cfg["out_std"])
        self.dtype, self.matmul = cfg["dtype"], cfg.get("matmul", "xla")

    def __call__(self, x):
        dt, shape, how = self.dtype, x.shape, self.matmul
        x = x.reshape(-1, shape[-1])  # 2-D matmuls (see Attention.qkv)
        gate, up = dense(x, self.w_gate[...].astype(dt), how), dense(x, self.w_up[...].astype(dt), how)
        h = jax.nn.silu(gate) * up
        return dense(h, self.w_down[...].astype(dt), how).reshape(shape)


# -- time conditioning (adaLN) ------------------------------------------------------------------
class TimeEmbedding(nnx.Module):
    """Diffusion time t[B, G] -> conditioning vectors c[B, G, D]: sinusoidal features of
    1000 t (DDPM / DiT), then a two-layer SiLU MLP. G groups of tokens share one time (one
    per sequence for MDLM, one per block for BD3LM)."""

    def __init__(self, d: int, *, rngs: nnx.Rngs):
        std = 1.0 / math.sqrt(d)
        self.d = d
        self.w1 = param(rngs, (d, d), ("embed", "mlp"), std)
        self.b1 = zeros_param((d,), ("mlp",))
        self.w2 = param(rngs, (d, d), ("mlp", "embed"), std)
        self.b2 = zeros_param((d,), ("embed",))

    def __call__(self, t):
        d = self.d
        half = d // 2
        freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
        ang = 1000.0 * t.astype(jnp.float32)[..., None] * freqs
        emb = jnp.concatenate([jnp.cos(ang), jnp.sin(ang), jnp.zeros((*t.shape, d - 2 * half))], -1)
        return jax.nn.silu(emb @ self.w1[...] + self.b1[...]) @ self.w2[...] + self.b2[...]


class Modulation(nnx.Module):
    """adaLN: ``n`` vectors [B, G, D] (shifts, scales, gates) from the conditioning c[B, G, D],
    ``silu(c) W + b`` with W, b zero-initialised: a time-conditioned model starts out as
    the unconditioned one (the gates enter as ``1 + g``, unlike DiT's adaLN-Zero)."""

    def __init__(self, d: int, n: int):
        self.w = zeros_param((d, n * d), ("embed", "mlp"))
        self.b = zeros_param((n * d,), ("mlp",))
        self.n = n

    def __call__(self, c):
        return jnp.split(jax.nn.silu(c) @ self.w[...] + self.b[...], self.n, axis=-1)


def _groups(h, v):
    """h[B, L, D] viewed as [B, G, L/G, D] against a per-group vector v[B, G, D]."""
    b, l, d = h.shape
    g = v.shape[1]
    return h.reshape(b, g, l // g, d), v[:, :, None, :].astype(h.dtype)


def modulate(h, shift, scale):
    hg, sh = _groups(h, shift)
    return (hg * (1 + _groups(h, scale)[1]) + sh).reshape(h.shape)


def gated(h, gate):
    hg, g = _groups(h, gate)
    return (hg * (1 + g)).reshape(h.shape)


# -- the block and the backbone -----------------------------------------------------------------
class Block(nnx.Module):
    """``x + mixer(norm(x))``, then ``x + mlp(norm(x))``; with time conditioning both branches
    are modulated (adaLN) by the conditioning vectors."""

    def __init__(self, cfg: dict, rngs: nnx.Rngs, *, mixer=None, mlp=None,
                 time_conditioning: bool = False):
        self.norm1 = RMSNorm(cfg["d_model"], cfg["norm_eps"])
        self.attn = (mixer or Attention)(cfg, rngs=rngs)
        self.norm2 = RMSNorm(cfg["d_model"], cfg["norm_eps"])
        self.mlp = (mlp or SwiGLU)(cfg, rngs=rngs)
        self.ada = Modulation(cfg["d_model"], 6) if time_conditioning else None

    def _run(self, x, cond, mix, decoding: bool):
        m = None if cond is None or self.ada is None else self.ada(cond)
        h = self.norm1(x)
        a, extra = mix(h if m is None else modulate(h, m[0], m[1]))
        x = x + (a if m is None else gated(a, m[2]))
        h = self.norm2(x)
        h = h if m is None else modulate(h, m[3], m[4])
        f = self.mlp.decode(h) if decoding and hasattr(self.mlp, "decode") else self.mlp(h)
        return x + (f if m is None else gated(f, m[5])), extra

    def __call__(self, x, rope, mask_kind, cond=None):
        return self._run(x, cond, lambda h: (self.attn(h, rope, mask_kind), None), False)[0]

    def decode(self, x, rope, cache, pos, cond=None):
        return self._run(x, cond, lambda h: self.attn.decode(h, rope, cache, pos), True)

    def decode_step(self, x, rope, cache, buf, start, i, cond=None):
        return self._run(x, cond, lambda h: self.attn.decode_step(h, rope, cache, buf, start, i), True)

    def decode_block(self, x, rope, cache, start, cond=None, around: bool = False):
        kw = {"around": True} if around else {}  # only mixers that read a cache on both sides take it
        return self._run(x, cond, lambda h: self.attn.decode_block(h, rope, cache, start, **kw), True)

    def prefill(self, x, rope, cond=None):
        return self._run(x, cond, lambda h: self.attn.prefill(h, rope), True)

    def step(self, x, rope, state, pos, cond=None):
        return self._run(x, cond, lambda h: self.attn.step(h, rope, state, pos), True)


class Transformer(nnx.Module):
    """Pre-norm Transformer backbone. tokens[B, L] int -> logits[B, L, V] float32.

    Args:
      vocab_size: the tokenizer's vocabulary (special tokens included).
      d_model, n_layers, n_heads: width, depth and query heads.
      n_kv_heads: key/value heads (GQA); defaults to ``n_heads`` (plain multi-head).
      d_ff: SwiGLU hidden width; defaults to 8/3 d_model rounded up to a multiple of 64.
      max_len: longest sequence the model is asked to handle (checked at call time).
      attention: ``auto`` | ``xla`` | ``chunked`` | ``cudnn`` | ``fused`` (see ``attention.py``).
      attn_chunk: query chunk length for ``chunked``.
      matmul: ``auto`` | ``xla`` | ``blas``: the dense projections' matmuls (``blas``: the CPU
        kernel's sgemm, ``cpu_kernels.matmul``; ``auto`` picks it on one CPU device with MKL).
      dtype: compute dtype name (``float32`` or ``bfloat16``).
      tie_embeddings: share the input embedding with the output projection.
      tie_rescale: with tied embeddings, divide the final hidden state by sqrt(d_model)
        before the output projection (the sandbox's embeddings are drawn with std 1, so the
        logits keep unit scale); false for Llama-style checkpoints (``model=llama``).
      norm_eps: the RMSNorm epsilon (Llama checkpoints declare theirs, 1e-5 for SmolLM2).
      logit_shift: position i's logits are read from position i-1's hidden state (position
        0 keeps its own). The "shift" of AR-to-diffusion adaptation (DiffuLLaMA, Gong et al.
        2025, sec. 3.2; Dream, Ye et al. 2025): a pretrained causal model's next-token head
        already predicts token i at position i-1, so a masked-diffusion objective trained on
        it starts from what the head knows instead of relearning "predict my own position".
        Only full forwards (``__call__``/``hidden``) shift: the cached decoding paths return
        each position's own logits, since their first position's shifted logits come from a
        hidden state before the chunk (a masked-diffusion sampler's causal prompt cache
        starts its chunks one position earlier instead, ``samplers/mdm.py``), and objectives
        that read logits in their own layout refuse the option (``Objective.check``).
      window: sliding-window width of the attention mixers (0: full attention).
      mixer: factory ``(cfg, rngs=...) -> token mixer`` (None: ``Attention``).
      mlp: factory ``(cfg, rngs=...) -> MLP`` (None: ``SwiGLU``).
      time_conditioning: adaLN from the diffusion time (an ablation; MDLM finds it
        unnecessary). The time is ``t`` when given (``[B]`` or ``[B, G]``); otherwise it is
        estimated from the input as the fraction of ``mask_id`` tokens (per sequence, or per
        block under a block-diffusion mask), which for absorbing diffusion is an unbiased
        estimate of the masking rate. Under a causal mask it is 0 (a fraction over the whole
        input would leak the future), so AR training and decoding see a constant.
      mask_id: the MASK token for the time estimate; default ``vocab_size - 2``, where the
        tokenizers put it (``sandbox/data/tokenizers.py``: text ids, EOS, PAD, MASK, BOS).
    """

    supported_masks = MASK_KINDS
    recurrent = False

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 n_kv_heads: int | None = None, d_ff: int | None = None, max_len: int = 1024,
                 rope_base: float = 10000.0, attention: str = "auto", attn_chunk: int = 64,
                 dtype: str = "float32", tie_embeddings: bool = False, tie_rescale: bool = True,
                 norm_eps: float = 1e-6, window: int = 0, mixer=None, mlp=None,
                 time_conditioning: bool = False, mask_id: int | None = None,
                 logit_shift: bool = False, matmul: str = "auto", rngs: nnx.Rngs,
                 name: str = "transformer"):
        n_kv_heads = n_kv_heads or n_heads
        if d_model % n_heads:
            raise UserError(f"model.n_heads={n_heads} must divide model.d_model={d_model}")
        if n_heads % n_kv_heads:
            raise UserError(f"model.n_kv_heads={n_kv_heads} must divide model.n_heads={n_heads}")
        if window < 0:
            raise UserError(f"model.window={window} must be >= 0 (0: full attention)")
        try:
            cdt = jnp.dtype(dtype)
        except TypeError:
            raise UserError(f"model.dtype: unknown dtype '{dtype}' (use float32 or bfloat16)") from None
        d_ff = d_ff or 64 * math.ceil(8 * d_model / 3 / 64)
        self.vocab_size = vocab_size
        self.padded_vocab = 128 * math.ceil(vocab_size / 128)
        self.max_len, self.dtype, self.tie = max_len, cdt, tie_embeddings
        self.tie_rescale = bool(tie_rescale)
        self.logit_shift = bool(logit_shift)
        self.name = name
        cfg = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                   head_dim=d_model // n_heads, d_ff=d_ff, rope_base=rope_base,
                   impl=resolve_impl(attention, cdt), chunk=attn_chunk, dtype=cdt,
                   matmul=resolve_matmul(matmul),
                   window=int(window), max_len=max_len, norm_eps=float(norm_eps),
                   out_std=1.0 / math.sqrt(d_model) / math.sqrt(2 * n_layers))
        self.cfg = cfg
        self.embed = param(rngs, (self.padded_vocab, d_model), ("vocab", "embed"), 1.0)
        self.blocks = nnx.List([Block(cfg, rngs, mixer=mixer, mlp=mlp, time_conditioning=time_conditioning)
                                for _ in range(n_layers)])
        self.norm = RMSNorm(d_model, float(norm_eps))
        if not tie_embeddings:
            self.head = param(rngs, (d_model, self.padded_vocab), ("embed", "vocab"),
                              1.0 / math.sqrt(d_model))
        mixers = [blk.attn for blk in self.blocks]
        self.supported_masks = tuple(k for k in MASK_KINDS
                                     if all(k in getattr(m, "supported_masks", ()) for m in mixers))
        self.recurrent = bool(mixers) and all(getattr(m, "recurrent", False) for m in mixers)
        self.time_conditioning = bool(time_conditioning)
        self.mask_id = vocab_size - 2 if mask_id is None else int(mask_id)
        if time_conditioning:  # drawn last: the other parameters equal the unconditioned model's
            self.time_embed = TimeEmbedding(d_model, rngs=rngs)
            self.ada_out = Modulation(d_model, 2)

    # -- conditioning ------------------------------------------------------------------------
    def _cond(self, tokens, mask_kind, t):
        """Conditioning vectors [B, G, D] for G groups of tokens, or None (no conditioning)."""
        if not self.time_conditioning:
            return None
        b, l = tokens.shape
        if mask_name(mask_kind) == "prompt":
            raise UserError("model.time_conditioning does not combine with the prompt mask "
                            "(objective.prompt_attention=self): the time estimated from the whole "
                            "input would let the prompt read the canvas; turn one of them off")
        if t is not None:
            t = jnp.asarray(t, jnp.float32).reshape(b, -1)  # [B] or [B, G]
        elif mask_name(mask_kind) == "causal":
            t = jnp.zeros((b, 1), jnp.float32)
        else:
            group = l if isinstance(mask_kind, str) else int(getattr(mask_kind, "block_size", l))
            group = group if l % group == 0 else l
            t = jnp.mean((tokens == self.mask_id).reshape(b, l // group, group), axis=-1)
        return self.time_embed(t).astype(self.dtype)

    def _final(self, x, cond):
        h = self.norm(x)
        if cond is None:
            return h
        shift, scale = self.ada_out(cond)
        return modulate(h, shift, scale)

    # -- the forward pass --------------------------------------------------------------------
    def hidden(self, tokens, *, mask_kind: str = "causal", positions=None, t=None):
        """tokens[B, L] -> final normalised hidden states [B, L, D]."""
        b, l = tokens.shape
        if positions is None and l > self.max_len:  # given positions: the caller checks
            raise UserError(f"train.seq_len={l} exceeds model.max_len={self.max_len}; "
                            "raise model.max_len or shorten the sequence")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(l), (b, l))
        x = self.embed[...][tokens].astype(self.dtype)
        r = Rope(positions, self.cfg["rope_base"])
        cond = self._cond(tokens, mask_kind, t)
        for blk in self.blocks:
            x = blk(x, r, mask_kind, cond)
        h = self._final(x, cond)
        if self.logit_shift:  # position i reads i-1's state (class doc); position 0 keeps its own
            h = jnp.concatenate([h[:, :1], h[:, :-1]], axis=1)
        return h

    def logits(self, h):
        """Hidden [B, L, D] -> logits [B, L, V] float32, padded vocabulary removed."""
        w = self.embed[...].T if self.tie else self.head[...]
        if self.tie and self.tie_rescale:
            h = h / math.sqrt(h.shape[-1])
        b, l, d = h.shape
        h2, w = h.reshape(b * l, d), w.astype(self.dtype)
        if self.dtype == jnp.float32:
            out = dense(h2, w, self.cfg["matmul"])
        else:
            out = jnp.dot(h2, w, preferred_element_type=jnp.float32)
        return out.reshape(b, l, -1)[..., : self.vocab_size]

    def __call__(self, tokens, *, mask_kind: str = "causal", positions=None, t=None):
        """tokens[B, L] -> logits[B, L, V]. ``t`` (diffusion time) is used only with
        ``time_conditioning`` (MDLM shows it is unnecessary for absorbing diffusion)."""
        return self.logits(self.hidden(tokens, mask_kind=mask_kind, positions=positions, t=t))

    def _start(self, tokens, first, mask_kind="causal"):
        """Embeddings, rotary tables and conditioning of tokens[B, T] at first..first+T-1."""
        b, t = tokens.shape
        positions = jnp.broadcast_to(first + jnp.arange(t), (b, t))
        x = self.embed[...][tokens].astype(self.dtype)
        return x, Rope(positions, self.cfg["rope_base"]), self._cond(tokens, mask_kind, None)

    # -- autoregressive decoding with a preallocated static KV cache --------------------------
    def init_cache(self, batch: int, max_len: int):
        """Zeroed cache, per layer the mixer's arrays (attention: (k, v), each
        [B, K, max_len, Dh], heads-major, the layout attention reads, so a decode step
        never transposes the whole cache)."""
        return [blk.attn.init_cache(batch, max_len, self.dtype) for blk in self.blocks]

    def decode(self, tokens, cache, pos):
        """Causal forward of tokens[B, T] at positions pos..pos+T-1 against the cache.
        Returns (logits[B, T, V], cache). T = prompt length for prefill, 1 per step after."""
        x, r, cond = self._start(tokens, pos)
        new = []
        for blk, c in zip(self.blocks, cache):
            x, c = blk.decode(x, r, c, pos, cond)
            new.append(c)
        return self.logits(self._final(x, cond)), new

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
        x, r, cond = self._start(tokens, start + i)
        new = []
        for blk, c, bf in zip(self.blocks, cache, buf):
            x, bf = blk.decode_step(x, r, c, bf, start, i, cond)
            new.append(bf)
        return self.logits(self._final(x, cond)), new

    def decode_block(self, tokens, cache, start, around: bool = False):
        """Block diffusion's step: tokens[B, T] at positions start..start+T-1 see each other
        (bidirectional) and the cache positions < start (read-only); ``around=True`` also the
        cache positions >= start + T (the dual cache of ``sampler.cache=dual``). Returns
        (logits[B, T, V], kv) where kv holds the T tokens' keys/values per layer, for
        ``commit`` once the block is final (its clean tokens' kv, as BD3LM's exact cache)."""
        x, r, cond = self._start(tokens, start, "bidirectional")
        kvs = []
        for blk, c in zip(self.blocks, cache):
            x, kv = blk.decode_block(x, r, c, start, cond, around=around)
            kvs.append(kv)
        return self.logits(self._final(x, cond)), kvs

    @staticmethod
    def commit(cache, buf, start):
        """Write the chunk buffer (positions start..start+C-1) into the cache (every cache
        array has its slot axis third)."""
        return [tuple(jax.lax.dynamic_update_slice(c, bf, (0, 0, start) + (0,) * (c.ndim - 3))
                      for c, bf in zip(cl, bl))
                for cl, bl in zip(cache, buf)]

    # -- recurrent decoding (mixers with a fixed-size state) ----------------------------------
    def _need_recurrent(self):
        if not self.recurrent:
            raise UserError(f"model '{self.name}' has no recurrent form (its token mixers keep a "
                            "KV cache); decode it with init_cache / decode / decode_step")

    def prefill(self, tokens):
        """Causal forward of tokens[B, P] from position 0 that also returns every layer's
        recurrent state after the last token: (logits[B, P, V], state)."""
        self._need_recurrent()
        x, r, cond = self._start(tokens, 0)
        states = []
        for blk in self.blocks:
            x, st = blk.prefill(x, r, cond)
            states.append(st)
        return self.logits(self._final(x, cond)), states

    def step(self, tokens, state, pos):
        """One token tokens[B, 1] at position ``pos`` given the state after the positions
        before it: (logits[B, 1, V], new state)."""
        self._need_recurrent()
        x, r, cond = self._start(tokens, pos)
        new = []
        for blk, st in zip(self.blocks, state):
            x, st = blk.step(x, r, st, pos, cond)
            new.append(st)
        return self.logits(self._final(x, cond)), new

    def n_params(self, non_embedding: bool = True) -> int:
        state = nnx.state(self, nnx.Param)
        total = sum(x.size for x in jax.tree.leaves(state))
        if non_embedding:  # get_value(): also works on an abstract (eval_shape) model
            total -= self.embed.get_value().size + (0 if self.tie else self.head.get_value().size)
        return int(total)
