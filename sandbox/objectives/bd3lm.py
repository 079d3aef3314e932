"""Block diffusion (BD3LM: Arriola et al. 2025, "Block Diffusion: Interpolating Between
Autoregressive and Diffusion Language Models").

The window ``x[B, L]`` is cut into ``L / block_size`` blocks. The model is autoregressive
over blocks and a masked-diffusion model inside each block:

    -log p(x) <= sum_b NELBO(x^b | x^{<b})                                 (BD3LM eq. 6)
    NELBO(x^b | x^{<b}) = E_t [ w(t) sum_{l in b : z_t^l = MASK} -log p_theta(x^l | z_t^b, x^{<b}) ]

with the MDLM weight ``w(t) = -alpha'(t) / (1 - alpha(t))`` (1/t for the linear schedule).
Divided by L it is in nats per token, an upper bound like MDLM's.

Design choices:
- One forward pass over the concatenation ``[z_t ; x]`` (length 2L, both halves at
  positions 0..L-1) with the block-diagonal / offset-block-causal / block-causal mask
  (``attention.BlockDiffusionMask``, BD3LM Sec. 3.2): the noised half's logits are every
  block's prediction given the clean earlier blocks. The backbone therefore reads 2L tokens
  per L-token window: ``flops_factor = 2`` (see ``sandbox.core.flops``).
- Each block draws its own time ``t`` (stratified over the batch's B x L/block_size blocks),
  as in the paper. Training may clip the mask rate to a window ``t ~ U[beta, omega]``
  (BD3LM Sec. 4, "clipped noise schedules"; a variance-reduction device that changes the
  training objective, not the reported bound); ``beta = t_min``, ``omega = 1`` by default.
- SUBS: the MASK logit is suppressed, unmasked tokens contribute nothing.
- Evaluation uses the masked-count form per block (see ``mdlm.py``): for each block draw
  ``k ~ U{1..block_size}``, mask k random positions of that block, and average the
  cross-entropy over them; the mean over blocks is an unbiased estimate of the unclipped
  NELBO / L with bounded draws. With ``block_size = 1`` it is deterministic and equals the
  network's autoregressive NLL (each token predicted at a masked position from the clean
  prefix); with ``block_size = L`` it is exactly MDLM's estimator (same draws, same mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core import prng
from sandbox.core.errors import UserError
from sandbox.models.attention import BlockDiffusionMask
from sandbox.models.logits import suppress
from sandbox.objectives.base import Objective, token_nll
from sandbox.objectives.schedules import Linear


@dataclass(frozen=True)
class BD3LM(Objective):
    block_size: int = 16
    schedule: object = Linear()  # alpha(t); the objective/schedule group (conf/objective/schedule/)
    t_min: float = 1e-3          # beta: lower end of the training mask-rate window
    t_max: float = 1.0           # omega: upper end
    eval_draws: int = 8
    antithetic: bool = True
    mask_id: int = -1
    name: str = "bd3lm"
    exact: bool = False
    flops_factor: float = 2.0    # the backbone reads [z_t ; x]: 2L tokens per L-token window
    mask_kind: object = None     # set from block_size
    sampler_family: str = "bd3lm"
    default_sampler: str = "bd3lm"

    @property
    def label(self) -> str:
        return f"bd3lm({self.block_size})"

    def __post_init__(self):
        if not (hasattr(self.schedule, "alpha") and hasattr(self.schedule, "weight")):
            raise UserError(f"objective.schedule={self.schedule!r} is not a schedule; select one with "
                            "objective/schedule=linear|cosine|polynomial (conf/objective/schedule/)")
        if self.block_size < 1:
            raise UserError(f"objective.block_size={self.block_size} must be >= 1")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise UserError(f"objective.t_min={self.t_min} and objective.t_max={self.t_max} "
                            "must satisfy 0 <= t_min < t_max <= 1 (the training mask-rate window)")
        object.__setattr__(self, "mask_kind", BlockDiffusionMask(int(self.block_size)))

    def bind(self, tokenizer):
        return self.replace(mask_id=int(tokenizer.mask_id))

    def check_len(self, model, l: int) -> int:
        if l % self.block_size:
            raise UserError(f"train.seq_len={l} is not a multiple of objective.block_size="
                            f"{self.block_size}; pick a block size that divides it")
        if l > getattr(model, "max_len", l):
            raise UserError(f"train.seq_len={l} exceeds model.max_len={model.max_len}")
        return l // self.block_size

    # -- pieces ------------------------------------------------------------------------------
    def logits(self, model, z, tokens):
        """Predictions for the noised half. z, tokens[B, L] -> logits[B, L, V] (SUBS)."""
        b, l = tokens.shape
        pos = jnp.broadcast_to(jnp.concatenate([jnp.arange(l), jnp.arange(l)]), (b, 2 * l))
        out = model(jnp.concatenate([z, tokens], axis=1), mask_kind=self.mask_kind, positions=pos)
        return suppress(out[:, :l], (self.mask_id,))

    def sample_times(self, key, n):
        """Times [n] in [t_min, t_max]: stratified (antithetic) or i.i.d. uniform."""
        if self.antithetic:
            u = jnp.mod(jax.random.uniform(key, ()) + jnp.arange(n) / n, 1.0)
        else:
            u = jax.random.uniform(key, (n,))
        return self.t_min + (self.t_max - self.t_min) * u

    def loss(self, model, tokens, key):
        assert self.mask_id >= 0, "call objective.bind(tokenizer) first"
        b, l = tokens.shape
        nb = self.check_len(model, l)
        kt, km = jax.random.split(key)
        t = self.sample_times(kt, b * nb).reshape(b, nb)
        t_tok = jnp.repeat(t, self.block_size, axis=1)                       # [B, L]
        masked = prng.uniform(km, tokens.shape) < 1.0 - self.schedule.alpha(t_tok)
        z = jnp.where(masked, self.mask_id, tokens)
        with self.aux_losses() as aux:
            ce = token_nll(self.logits(model, z, tokens), tokens)
        w = self.schedule.weight(jnp.maximum(t_tok, 1e-12))
        loss = jnp.mean(jnp.where(masked, w * ce, 0.0))
        return self.add_aux(loss, {"nelbo": loss}, aux)

    def nll_count(self, model, tokens, key, u):
        """Masked-count form, one draw per sequence [B]: u[B, nb] in [0, 1) sets each
        block's count k = floor(u * block_size) + 1."""
        b, l = tokens.shape
        bs = self.block_size
        nb = l // bs
        k = jnp.clip(jnp.floor(u * bs).astype(jnp.int32) + 1, 1, bs)           # [B, nb]
        r = prng.uniform(key, (b, l)).reshape(b, nb, bs)
        rank = jnp.argsort(r, axis=-1).argsort(axis=-1)
        masked = (rank < k[..., None]).reshape(b, l)
        z = jnp.where(masked, self.mask_id, tokens)
        ce = token_nll(self.logits(model, z, tokens), tokens).reshape(b, nb, bs)
        per_block = jnp.sum(jnp.where(masked.reshape(b, nb, bs), ce, 0.0), axis=-1) / k
        return jnp.mean(per_block, axis=-1)

    def nll(self, model, tokens, key, draws: int | None = None):
        """NELBO draws [K, B] in nats per token (upper bound), stratified over K draws."""
        assert self.mask_id >= 0, "call objective.bind(tokenizer) first"
        n = int(draws or self.eval_draws)
        b, l = tokens.shape
        nb = self.check_len(model, l)
        ku, km = jax.random.split(key)
        u = (prng.uniform(ku, (b, nb))[None] + jnp.arange(n)[:, None, None]) / n  # [K, B, nb]
        keys = jax.random.split(km, n)
        return jax.lax.map(lambda a: self.nll_count(model, tokens, a[0], a[1]), (keys, u))
