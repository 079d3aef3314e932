"""Gated linear attention: a sub-quadratic token mixer with an exact recurrent form.

Per head, a state ``S [Dk, Dv]`` decays by a data-dependent gate and accumulates the
key-value outer products (GLA, Yang et al. 2024, with a scalar gate per head as in
Mamba-2 / RetNet's decay made data-dependent):

    S_t = a_t S_{t-1} + k_t^T v_t,        o_t = q_t S_t,
    a_t = exp(-softplus(x_t w_a + b_a))  in (0, 1)

followed by a per-head RMSNorm, a SiLU output gate ``silu(x W_g)`` and the output
projection. No positional encoding is needed: the decay orders the tokens.

- **Training (causal)**: the chunkwise-parallel form. Within a chunk of ``chunk`` tokens,
  ``o_c = sum_{s <= c} exp(G_c - G_s) (q_c . k_s) v_s`` (``G`` = cumulative log-gate, all
  exponents <= 0) as a masked C x C matmul; across chunks the state is carried by a
  ``lax.scan`` over the L / C chunk summaries. O(L C d + L d^2) instead of O(L^2 d).
- **Decoding**: ``prefill`` runs the chunked form and returns the final state; ``step``
  applies the recurrence once per token. Both give the full forward's logits (tested).
  ``samplers/ar.py`` uses them (``model.recurrent``): the state is ``[B, H, Dk, Dv]``
  whatever the length. There is no KV cache (``decode`` / ``decode_block`` refuse).
- **Bidirectional (MDLM)**: the causal pass plus the same operator run right-to-left
  over the later tokens (strictly after t, decays ``prod a_{t+1..s}``), sharing the
  projections.
- **Block diffusion is not supported**: its ``[x_t ; x_0]`` mask (a noised block sees its
  own block and the earlier clean blocks, never the earlier noised ones) has no
  single-state recurrence; ``supported_masks`` omits it, so ``objective=bd3lm`` refuses
  this model in one line. ``model.window`` does not apply either.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.models.attention import mask_name
from sandbox.models.transformer import RMSNorm, param


def chunked_gla(q, k, v, log_a, chunk: int, strict: bool = False, state=None):
    """q, k[B, L, H, Dk], v[B, L, H, Dv], log_a[B, L, H] (<= 0) -> (o[B, L, H, Dv],
    final state [B, H, Dk, Dv]). ``o_t = sum_{s <= t} exp(G_t - G_s) (q_t . k_s) v_s`` plus
    the decayed initial ``state``; ``strict``: s < t."""
    b, l, h, dk = q.shape
    dv = v.shape[-1]
    c = min(chunk, l)
    n = -(-l // c)
    pad = n * c - l
    if pad:  # zero keys/values and unit gates at the end change neither outputs nor state
        q, k, v, log_a = (jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
                          for a in (q, k, v, log_a))

    def chunks(a):  # [B, L, H, ...] -> [B, H, N, C, ...]
        a = a.reshape(b, n, c, h, *a.shape[3:])
        return jnp.moveaxis(a, 3, 1)

    q, k, v = chunks(q), chunks(k), chunks(v)
    g = jnp.cumsum(chunks(log_a.astype(jnp.float32)), axis=-1)             # [B, H, N, C]
    keep = np.tril(np.ones((c, c), bool), -1 if strict else 0)
    diff = jnp.where(keep, g[..., :, None] - g[..., None, :], -jnp.inf)
    scores = jnp.einsum("bhncd,bhnsd->bhncs", q, k, preferred_element_type=jnp.float32)
    o = jnp.einsum("bhncs,bhnsv->bhncv", (scores * jnp.exp(diff)).astype(v.dtype), v)
    last = g[..., -1]                                                      # [B, H, N]
    w = jnp.exp(last[..., None] - g).astype(k.dtype)                       # [B, H, N, C]
    u = jnp.einsum("bhncd,bhncv->bhndv", k * w[..., None], v,
                   preferred_element_type=jnp.float32)                     # chunk summaries

    def carry(s, xs):
        decay, un = xs
        return decay[..., None, None] * s + un, s

    s0 = jnp.zeros((b, h, dk, dv), jnp.float32) if state is None else state
    final, before = jax.lax.scan(carry, s0, (jnp.moveaxis(jnp.exp(last), 2, 0), jnp.moveaxis(u, 2, 0)))
    before = jnp.moveaxis(before, 0, 2)                                    # [B, H, N, Dk, Dv]
    inter = jnp.einsum("bhncd,bhndv->bhncv", q * jnp.exp(g)[..., None].astype(q.dtype),
                       before.astype(q.dtype))
    o = jnp.moveaxis(o + inter, 1, 3).reshape(b, n * c, h, dv)[:, :l]
    return o, final


class GatedLinearAttention(nnx.Module):
    """x[B, L, D] -> [B, L, D] (see the module doc)."""

    supported_masks = ("causal", "bidirectional")
    recurrent = True

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs, chunk: int = 32,
                 decay_range: tuple = (0.9, 0.999)):
        if cfg.get("window", 0):
            raise UserError(f"model.window={cfg['window']} does not apply to gated linear attention "
                            "(its decay already forgets); set model.window=0")
        d, h, dh = cfg["d_model"], cfg["n_heads"], cfg["head_dim"]
        std = 1.0 / math.sqrt(d)
        self.wq = param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), std)
        self.wk = param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), std)
        self.wv = param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), std)
        self.wa = param(rngs, (d, h), ("embed", "heads"), std)
        # gate bias: head h starts with decay a_h log-spaced over decay_range (several timescales)
        lo, hi = decay_range
        rate = np.exp(np.linspace(np.log(-np.log(lo)), np.log(-np.log(hi)), h))   # -log a > 0
        self.ba = nnx.Param(jnp.asarray(np.log(np.expm1(rate)), jnp.float32), logical_axes=("heads",))
        self.wg = param(rngs, (d, h, dh), ("embed", "heads", "head_dim"), std)
        self.norm = RMSNorm(dh)
        self.wo = param(rngs, (h, dh, d), ("heads", "head_dim", "embed"), cfg["out_std"])
        self.n_heads, self.head_dim, self.chunk, self.dtype = h, dh, int(chunk), cfg["dtype"]

    def _proj(self, x):
        b, l, d = x.shape
        x2 = x.reshape(b * l, d)

        def mm(w):
            w = w[...]
            return (x2 @ w.reshape(d, -1).astype(self.dtype)).reshape(b, l, *w.shape[1:])

        q = mm(self.wq) * (1.0 / math.sqrt(self.head_dim))
        log_a = -jax.nn.softplus(mm(self.wa).astype(jnp.float32) + self.ba[...])   # [B, L, H]
        return q, mm(self.wk), mm(self.wv), log_a, jax.nn.silu(mm(self.wg))

    def _out(self, o, gate):
        b, l, h, dh = o.shape
        o = self.norm(o.astype(self.dtype)) * gate
        return (o.reshape(b * l, h * dh) @ self.wo[...].reshape(h * dh, -1).astype(self.dtype)
                ).reshape(b, l, -1)

    def __call__(self, x, rope, mask_kind):
        del rope  # no positional encoding: the decay orders the tokens
        kind = mask_name(mask_kind)
        if kind not in self.supported_masks:
            raise UserError(f"gated linear attention supports {' and '.join(self.supported_masks)} "
                            f"masks, not {kind}; pick another model for this objective")
        q, k, v, log_a, gate = self._proj(x)
        o, _ = chunked_gla(q, k, v, log_a, self.chunk)
        if kind == "bidirectional":  # right-to-left over s > t: gates shifted by one
            flip = lambda a: jnp.flip(a, axis=1)  # noqa: E731
            la = jnp.pad(flip(log_a)[:, :-1], ((0, 0), (1, 0), (0, 0)))
            back, _ = chunked_gla(flip(q), flip(k), flip(v), la, self.chunk, strict=True)
            o = o + flip(back)
        return self._out(o, gate)

    # -- recurrent decoding ----------------------------------------------------------------------
    def init_state(self, batch: int):
        return jnp.zeros((batch, self.n_heads, self.head_dim, self.head_dim), jnp.float32)

    def prefill(self, x, rope):
        """Causal forward of x[B, P, D] from position 0 -> (y, state after the last token)."""
        del rope
        q, k, v, log_a, gate = self._proj(x)
        o, state = chunked_gla(q, k, v, log_a, self.chunk)
        return self._out(o, gate), state

    def step(self, x, rope, state, pos):
        """One token x[B, 1, D] given the state of the tokens before it -> (y, new state)."""
        del rope, pos
        q, k, v, log_a, gate = self._proj(x)
        state = (jnp.exp(log_a[:, 0])[..., None, None] * state
                 + jnp.einsum("bhd,bhv->bhdv", k[:, 0], v[:, 0], preferred_element_type=jnp.float32))
        o = jnp.einsum("bhd,bhdv->bhv", q[:, 0].astype(jnp.float32), state)[:, None]
        return self._out(o, gate), state

    # -- no KV cache -----------------------------------------------------------------------------
    def _no_cache(self, *args, **kw):
        raise UserError("gated linear attention has no KV cache: it decodes recurrently "
                        "(model.prefill / model.step; sampler=ar does this) and does not "
                        "support block diffusion")

    init_cache = decode = decode_step = decode_block = _no_cache
