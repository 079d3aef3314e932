"""Autoregressive sampling with a preallocated static KV cache.

The model reads ``[BOS, x_0, x_1, ...]`` (the training convention of ``objective=ar``).
With ``use_cache`` the prompt (with BOS) is prefilled in one call, then each new token is
one ``model.decode`` call on a cache of static length ``length + 1``: one compiled step
serves every position, and its cost is flat in the position. ``use_cache=false`` is the
reference for the speed benchmark: every step reruns the full causal forward over the
whole static buffer.

Temperature, top-k and top-p act on the logits before the exact categorical draw
(``categorical.sample``). BOS, PAD and MASK never occur as targets in the training data, so
their logits are suppressed (an undertrained model would otherwise emit them); EOS stays.
NFE = number of generated tokens (prefill included).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.errors import UserError
from sandbox.samplers.base import Sampler
from sandbox.samplers.categorical import filter_logits, sample


@dataclass(frozen=True)
class ARSampler(Sampler):
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    use_cache: bool = True
    precision: str = "exact"
    bos_id: int = -1
    banned_ids: tuple = ()
    name: str = "ar"
    family: str = "ar"

    def bind(self, tokenizer):
        banned = tuple(int(getattr(tokenizer, f)) for f in ("bos_id", "pad_id", "mask_id")
                       if getattr(tokenizer, f, None) is not None)
        return self.replace(bos_id=int(tokenizer.bos_id), banned_ids=banned)

    def check(self, **kw):
        super().check(**kw)
        if not self.temperature > 0:
            raise UserError(f"sampler.temperature={self.temperature} must be positive")
        if not 0 < self.top_p <= 1:
            raise UserError(f"sampler.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise UserError(f"sampler.top_k={self.top_k} must be >= 0 (0: off)")

    def _draw(self, key, logits):
        if self.banned_ids:
            logits = logits.at[..., jnp.array(self.banned_ids)].set(-jnp.inf)
        return sample(key, filter_logits(logits, self.temperature, self.top_k, self.top_p),
                      self.precision)

    def generate(self, model, key, prompt, length: int):
        b, p = prompt.shape
        g = length - p
        bos = jnp.full((b, 1), self.bos_id, jnp.int32)
        seq = jnp.concatenate([bos, prompt.astype(jnp.int32)], axis=1)  # [B, P + 1]
        keys = jax.random.split(key, g)
        if self.use_cache and hasattr(model, "decode"):
            cache = model.init_cache(b, length + 1)
            logits, cache = model.decode(seq, cache, 0)
            first = self._draw(keys[0], logits[:, -1])

            def step(carry, xs):
                tok, cache = carry
                i, k = xs
                logits, cache = model.decode(tok[:, None], cache, p + 1 + i)
                nxt = self._draw(k, logits[:, 0])
                return (nxt, cache), nxt

            _, rest = jax.lax.scan(step, (first, cache), (jnp.arange(g - 1), keys[1:]))
            gen = jnp.concatenate([first[:, None], rest.T], axis=1)
        else:
            buf = jnp.zeros((b, length + 1), jnp.int32).at[:, : p + 1].set(seq)

            def step(buf, xs):
                i, k = xs
                logits = model(buf, mask_kind="causal")                    # full forward
                nxt = self._draw(k, jax.lax.dynamic_index_in_dim(logits, p + i, 1, keepdims=False))
                return jax.lax.dynamic_update_slice(buf, nxt[:, None], (0, p + 1 + i)), None

            buf, _ = jax.lax.scan(step, buf, (jnp.arange(g), keys))
            gen = buf[:, p + 1:]
        return jnp.concatenate([prompt.astype(jnp.int32), gen], axis=1), jnp.int32(g)
