"""Operations on a backbone's output logits shared by objectives and samplers.

Kept beside the backbones (which produce the logits) so that objectives and samplers,
which must not import each other, share one implementation.
"""

from __future__ import annotations

import jax.numpy as jnp


def suppress(logits, ids):
    """logits[..., V] with -inf at the token ids ``ids`` (SUBS's mask token, tokens a
    sampler must never draw). A broadcast select fuses into the logits' producer; a scatter
    (``.at[...].set``) would copy the whole [B, L, V] array."""
    ids = jnp.asarray(tuple(ids), jnp.int32)
    return jnp.where(jnp.isin(jnp.arange(logits.shape[-1]), ids), -jnp.inf, logits)
