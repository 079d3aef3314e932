"""ReMDM: masked-diffusion sampling that may remask tokens it already revealed.

Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling"
(arXiv 2503.00307), sec. 3: the reverse step from time t to s < t of a masked-diffusion
model with a remasking rate sigma_t,

    z_t = [MASK]:  z_s = x_theta   with prob. (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t),
                   stays [MASK] otherwise;
    z_t = token:   z_s = [MASK]    with prob. sigma_t, stays the token otherwise,

which keeps MDLM's marginals for any sigma_t in [0, sigma_max], sigma_max =
min(1, (1 - alpha_s) / alpha_t) (their eq. 6; sigma_t = 0 is MDLM's ancestral step). The
**cap schedule** (ReMDM-cap, eq. 9) uses sigma_t = min(eta, sigma_max). A remasked position is
drawn again later from the model, which has meanwhile seen more of the canvas: the
"self-correction" that lets sampling trade steps for quality. Linear alpha_t = 1 - t as in
the rest of the sandbox.

Choices: remasking runs only once ``t <= t_on`` ("late in sampling": the canvas is mostly
revealed, so the model's second opinion is informed; ReMDM's loop strategy similarly remasks
in a late window); the last step (s = 0) reveals every remaining mask (sigma = 0 there), so
the output never holds a mask. Only positions that were masked when the block started are
ever remasked (never the prompt or the known tokens of an infill canvas). Tokens are drawn
two-stage with the exact categorical. One model call per step (remasking changes the canvas
each step, so MDLM's reuse of unchanged logits does not apply).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core import prng
from sandbox.core.errors import UserError
from sandbox.samplers.categorical import sample
from sandbox.samplers.mdm import MaskedDiffusionSampler, time_grid


@dataclass(frozen=True)
class ReMDM(MaskedDiffusionSampler):
    eta: float = 0.04        # the cap of the remasking rate (ReMDM-cap)
    t_on: float = 0.5        # remask only at times t <= t_on (late in sampling)
    name: str = "mdm_remask"

    def check(self, **kw):
        super().check(**kw)
        for f in ("eta", "t_on"):
            v = getattr(self, f)
            if not 0 <= v <= 1:
                raise UserError(f"sampler.{f}={v} must be in [0, 1]")

    def fill_block(self, model, key, z, eligible, n_steps):
        ts = time_grid(n_steps, self.grid)
        generated = eligible & (z == self.mask_id)  # known tokens (prompt, infill context) are never remasked

        def step(carry, xs):
            z, nfe = carry
            t, s, k = xs
            a_t, a_s = 1.0 - t, 1.0 - s
            sigma_max = jnp.minimum(1.0, (1.0 - a_s) / jnp.maximum(a_t, 1e-12))
            sigma = jnp.where((t <= self.t_on) & (s > 0), jnp.minimum(self.eta, sigma_max), 0.0)
            p_unmask = jnp.where(s <= 0, 1.0, (a_s - (1.0 - sigma) * a_t) / jnp.maximum(1.0 - a_t, 1e-12))
            k1, k2 = jax.random.split(k)
            x = sample(k2, self.predict(model, z), self.precision)
            u = prng.uniform(k1, z.shape)
            masked = z == self.mask_id
            reveal = generated & masked & (u < p_unmask)
            remask = generated & ~masked & (u < sigma)
            z = jnp.where(reveal, x, jnp.where(remask, self.mask_id, z))
            return (z, nfe + 1), None

        todo = jnp.any(generated)
        keys = jax.random.split(key, n_steps)

        def run():
            return jax.lax.scan(step, (z, jnp.int32(0)), (ts[:-1], ts[1:], keys))[0]

        return jax.lax.cond(todo, run, lambda: (z, jnp.int32(0)))
