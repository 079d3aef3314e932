"""Mixture-of-experts MLP: top-k routing with expert capacity and a load-balancing loss.

``MoE(cfg, rngs=..., n_experts, top_k, capacity_factor, d_expert, aux_weight)`` replaces the
SwiGLU MLP of a block (``mlp:`` in the model config). Switch Transformer (Fedus et al. 2021)
and GShard (Lepikhin et al. 2020):

- A linear router gives each token a softmax over ``n_experts`` SwiGLU experts; the token
  goes to its ``top_k`` experts, weighted by their router probabilities (renormalised over
  the k chosen when k > 1).
- **Capacity.** Each sequence is a routing group. An expert takes at most
  ``C = ceil(capacity_factor * L * top_k / n_experts)`` of a group's L tokens (at most L);
  assignments beyond that are dropped: that expert adds nothing for the token, so a token
  dropped by all its experts passes through the block's residual unchanged. Priority is
  token order (position, then choice), so whether token i is dropped depends only on
  tokens <= i: the layer stays causal, and a sequence never affects another.
- **Load balancing.** ``aux = n_experts * sum_e f_e P_e`` with ``f_e`` the fraction of the
  group's assignments routed to expert e and ``P_e`` its mean router probability (1 when
  balanced). It is recorded with ``aux.record(aux, aux_weight)``; objectives add
  ``aux_weight * aux`` to their loss and report ``aux_loss``.
- **Decoding** (``decode``, called by the backbone's cached-decoding paths) routes every
  token to its k experts without a capacity limit: capacity is a training device for
  static shapes. Cached decoding therefore equals the full forward whenever the full
  forward drops nothing (always with ``capacity_factor >= n_experts / top_k``).

Experts are batched matmuls over a per-group dispatch buffer ``[B, E * C, D]`` built by a
scatter-add (no dense ``[tokens, E, C]`` dispatch tensor, whose size grows with L^2).
``n_params`` counts every expert; a token uses ``top_k`` of them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.models import aux
from sandbox.models.transformer import param


class MoE(nnx.Module):
    """x[B, L, D] -> [B, L, D]: top-k mixture of SwiGLU experts (see the module doc)."""

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs, n_experts: int = 8, top_k: int = 2,
                 capacity_factor: float = 1.25, d_expert: int | None = None,
                 aux_weight: float = 0.01):
        if n_experts < 1 or not 1 <= top_k <= n_experts:
            raise UserError(f"model.mlp: need 1 <= top_k <= n_experts (got top_k={top_k}, "
                            f"n_experts={n_experts})")
        if not capacity_factor > 0 or aux_weight < 0:
            raise UserError(f"model.mlp: capacity_factor={capacity_factor} must be > 0 and "
                            f"aux_weight={aux_weight} >= 0")
        d, f, e = cfg["d_model"], d_expert or cfg["d_ff"], n_experts
        std = 1.0 / math.sqrt(d)
        self.router = param(rngs, (d, e), ("embed", "experts"), std)
        self.w_gate = param(rngs, (e, d, f), ("experts", "embed", "mlp"), std)
        self.w_up = param(rngs, (e, d, f), ("experts", "embed", "mlp"), std)
        self.w_down = param(rngs, (e, f, d), ("experts", "mlp", "embed"), cfg["out_std"])
        self.n_experts, self.top_k = e, top_k
        self.capacity_factor, self.aux_weight = float(capacity_factor), float(aux_weight)
        self.dtype = cfg["dtype"]

    def capacity(self, l: int) -> int:
        """Slots per expert for a group of l tokens."""
        c = math.ceil(self.capacity_factor * l * self.top_k / self.n_experts)
        return max(1, min(l, c))

    def route(self, x):
        """x[B, L, D] -> (experts int[B, L, k], gates [B, L, k], probs [B, L, E])."""
        b, l, d = x.shape
        logits = x.reshape(b * l, d) @ self.router[...].astype(self.dtype)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(b, l, -1)
        gates, idx = jax.lax.top_k(probs, self.top_k)
        if self.top_k > 1:
            gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
        return idx, gates, probs

    def _apply(self, x, cap: int, record: bool):
        b, l, d = x.shape
        e, k, dt = self.n_experts, self.top_k, self.dtype
        idx, gates, probs = self.route(x)
        onehot = jax.nn.one_hot(idx, e, dtype=jnp.int32)                       # [B, L, k, E]
        # slot of each assignment in its expert's buffer: running count in token order
        pos = jnp.cumsum(onehot.reshape(b, l * k, e), axis=1).reshape(b, l, k, e) - 1
        pos = jnp.sum(pos * onehot, axis=-1)                                    # [B, L, k]
        keep = pos < cap
        slot = jnp.where(keep, idx * cap + pos, e * cap).reshape(b, l * k)     # e*cap: dropped
        xs = jnp.broadcast_to(x[:, :, None, :], (b, l, k, d)).reshape(b, l * k, d)
        buf = jax.vmap(lambda s, v: jnp.zeros((e * cap + 1, d), x.dtype).at[s].add(v))(slot, xs)
        h = buf[:, : e * cap].reshape(b, e, cap, d).transpose(1, 0, 2, 3).reshape(e, b * cap, d)
        h = (jax.nn.silu(jnp.einsum("end,edf->enf", h, self.w_gate[...].astype(dt)))
             * jnp.einsum("end,edf->enf", h, self.w_up[...].astype(dt)))
        y = jnp.einsum("enf,efd->end", h, self.w_down[...].astype(dt))
        y = y.reshape(e, b, cap, d).transpose(1, 0, 2, 3).reshape(b, e * cap, d)
        y = jnp.concatenate([y, jnp.zeros((b, 1, d), y.dtype)], axis=1)        # the dropped row
        out = jax.vmap(lambda yy, s: yy[s])(y, slot).reshape(b, l, k, d)
        w = (gates * keep).astype(out.dtype)
        if record:
            frac = jnp.mean(onehot.astype(jnp.float32), axis=(0, 1, 2))      # f_e, sums to 1
            aux.record(e * jnp.sum(frac * jnp.mean(probs, axis=(0, 1))), self.aux_weight)
        return jnp.sum(out * w[..., None], axis=2)

    def __call__(self, x):
        return self._apply(x, self.capacity(x.shape[1]), record=True)

    def decode(self, x):
        """Routing without a capacity limit (decoding paths; see the module doc)."""
        return self._apply(x, x.shape[1], record=False)

    def dropped(self, x):
        """Fraction of the assignments of x[B, L, D] dropped for capacity (diagnostics)."""
        b, l, _ = x.shape
        idx, _, _ = self.route(x)
        onehot = jax.nn.one_hot(idx, self.n_experts, dtype=jnp.int32)
        pos = jnp.cumsum(onehot.reshape(b, -1, self.n_experts), axis=1).reshape(onehot.shape) - 1
        return jnp.mean(jnp.sum(pos * onehot, axis=-1) >= self.capacity(l))
