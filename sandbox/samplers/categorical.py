"""Exact categorical sampling, and the truncating float32 form kept as a named ablation.

Gumbel-max: ``argmax(logits + g)``, ``g = -log(E)``, ``E ~ Exp(1)``, samples exactly from
``softmax(logits)`` only if ``g`` has its full right tail. The usual float32 construction
``g = -log(-log(u))`` with ``u`` on a 2^-23 grid stops at g ~ 15.9: a token whose log
probability is ~16-20 nats below the winner's can never be drawn, and tokens a little
closer are drawn with distorted probability. It lowers the effective temperature without
saying so, and makes diffusion samples look better than they are (Zheng et al. 2024,
"Masked diffusion models are secretly time-agnostic masked models and exploit inaccurate
categorical sampling"; MD4, Shi et al. 2024, App. G).

``precision="exact"`` (the default everywhere) draws ``E`` from 64 random bits: a uniform
``v`` with full relative precision down to 2^-64, then ``E = -log1p(-v)``, so ``g`` reaches
~44 (float64's own construction reaches ~37). The arithmetic stays float32: JAX's scoped
x64 mode cannot be entered inside a jitted sampler (mixed-width lowering fails in
JAX 0.10), and turning x64 on globally would change every default dtype in the library.

``precision="fp32_truncating"`` is ``jax.random.categorical`` in float32 (the truncating
form). It exists only so the ablation and the test can show the effect.

``precision="greedy"`` is not sampling: it returns ``argmax(logits)`` and ignores the key.
It is argmax decoding for exact-match benchmarks (code edits), where a sampled answer would
make the score depend on the seed. Temperature, top-k and top-p do not change the argmax.
Diffusion samplers still choose *which* positions to reveal as before (a Bernoulli draw, a
ranking by confidence); only the token drawn at a revealed position becomes the argmax, and
its confidence is then the maximum probability.

Diffusion samplers use the *two-stage* form: positions to reveal are chosen first (a
Bernoulli or a ranking), then tokens are drawn from the model's unscaled distribution with
this function. The single "scaled" categorical over ``[p * (1 - r), r]`` (token or stay
masked) is what makes the truncation bite at many steps, and is not used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sandbox.core import prng
from sandbox.core.errors import UserError

PRECISIONS = ("exact", "fp32_truncating", "greedy")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"sampler.precision: unknown value '{precision}' (choose one of "
                        f"{', '.join(PRECISIONS)})")
    return precision


def exact_gumbel(key, shape):
    """Gumbel(0, 1) noise [shape] whose right tail is intact to g ~ 44 (see module doc)."""
    bits = prng.bits(key, (2, *shape))
    hi = bits[0].astype(jnp.float32) * jnp.float32(2.0**-32)
    lo = bits[1].astype(jnp.float32) * jnp.float32(2.0**-64)
    v = jnp.where(bits[0] > 0, hi, lo)                       # U(0, 1), fine near 0
    v = jnp.minimum(v, jnp.float32(1.0 - 2.0**-24))
    e = -jnp.log1p(-v)                                       # Exp(1), accurate when tiny
    return -jnp.log(jnp.maximum(e, jnp.float32(2.0**-64)))


def sample(key, logits, precision: str = "exact"):
    """Draw from softmax(logits) over the last axis (``greedy``: its argmax, key unused).
    logits[..., V] -> int32[...]."""
    logits = logits.astype(jnp.float32)
    if precision == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if precision == "fp32_truncating":
        # jax.random.categorical's own construction, noise drawn flat (sandbox.core.prng)
        return jnp.argmax(logits + prng.gumbel(key, logits.shape), axis=-1).astype(jnp.int32)
    return jnp.argmax(logits + exact_gumbel(key, logits.shape), axis=-1).astype(jnp.int32)


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Temperature, then top-k and nucleus (top-p) truncation. logits[..., V] -> [..., V]."""
    logits = logits.astype(jnp.float32) / jnp.float32(max(temperature, 1e-6))
    neg = jnp.finfo(jnp.float32).min
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = -jnp.sort(-logits, axis=-1)                 # descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        n_keep = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, jnp.maximum(n_keep, 1) - 1, axis=-1)
        logits = jnp.where(logits < cutoff, neg, logits)             # smallest set with mass >= p
    return logits
