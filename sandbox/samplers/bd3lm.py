"""Block-diffusion sampling for checkpoints trained with ``objective=bd3lm`` (Arriola et al.
2025, Alg. 2).

Blocks of ``block_size`` tokens are generated left to right. Inside a block, any
masked-diffusion sampler of ``sandbox.samplers.mdm`` (``inner``: ancestral, top-k
confidence, threshold, first-hitting; its ``steps`` are per block) denoises the block; the
model reads the block bidirectionally plus the keys/values of the finished blocks
(``model.decode_block`` against a read-only cache, ``mdm.CachedView``). When the block is
final, one more ``decode_block`` over its clean tokens gives their keys/values, which
``model.commit`` writes into the cache: the exact KV cache of BD3LM (clean blocks'
keys/values are what the training mask shows later blocks). NFE counts every model call,
commits included.

Length: the output holds up to ``length`` tokens (rounded up to whole blocks inside).
With ``stop_at_eos`` generation stops after the first block in which every sequence has
produced EOS, so a short answer costs few blocks: generation of any length until EOS,
within the static buffer. Positions after a sequence's first EOS are set to EOS, and
blocks that were never generated hold EOS too, so the output never contains a mask.

A prompt fills the first positions; blocks it covers keep its tokens fixed (their masked
positions, if any, are denoised), so prompt-conditional generation needs no special path.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.samplers.base import Sampler
from sandbox.samplers.mdm import Ancestral, CachedView, MaskedDiffusionSampler, pad_after_eos


@dataclass(frozen=True)
class BD3LMSampler(Sampler):
    block_size: int = 16
    inner: MaskedDiffusionSampler = Ancestral(steps=16)
    stop_at_eos: bool = True
    eos_id: int = -1
    mask_id: int = -1
    name: str = "bd3lm"
    family: str = "bd3lm"

    pads_after_eos = True  # generate() pads after the first EOS whatever stop_at_eos says

    @property
    def precision(self):  # one categorical path: the inner sampler's
        return self.inner.precision

    def bind(self, tokenizer):
        return self.replace(inner=self.inner.bind(tokenizer), eos_id=int(tokenizer.eos_id),
                            mask_id=int(tokenizer.mask_id))

    def check(self, *, family: str, length: int, prompt_len: int, objective: str | None = None) -> None:
        super().check(family=family, length=length, prompt_len=prompt_len, objective=objective)
        if not 1 <= self.block_size <= length:
            raise UserError(f"sampler.block_size={self.block_size} must be between 1 and the "
                            f"output length {length}")
        if self.inner.block_size:
            raise UserError("sampler.inner.block_size must be 0: blocks are set by "
                            "sampler.block_size")
        if getattr(self.inner, "uses_steps", False) and not 1 <= self.inner.steps <= self.block_size:
            raise UserError(f"sampler.inner.steps={self.inner.steps} (steps per block) must be "
                            f"between 1 and sampler.block_size={self.block_size}")
        self.inner.check(family=self.inner.family, length=self.block_size, prompt_len=0)

    def for_objective(self, objective):
        """The default sampler of a BD3LM run: the block size it was trained with."""
        bs = int(getattr(objective, "block_size", self.block_size))
        inner = self.inner
        if getattr(inner, "uses_steps", False):
            inner = inner.replace(steps=min(inner.steps, bs))
        return self.replace(block_size=bs, inner=inner)

    def settings(self) -> dict:
        out = super().settings()
        out["inner"] = {"name": self.inner.name, **self.inner.settings()}
        return out

    def forward_plan(self, batch, length, prompt_len, nfe, computed=None):
        """``nfe`` calls (denoising steps and commits) of one block each, against the keys and
        values of the blocks before it: on average half the output plus the block itself."""
        bs = float(self.block_size)
        return [(float(nfe), batch, bs, bs + float(length) / 2)] if nfe else []

    def generate(self, model, key, prompt, length: int):
        if not hasattr(model, "decode_block"):
            raise UserError(f"sampler=bd3lm needs a backbone with decode_block; model "
                            f"'{getattr(model, 'name', type(model).__name__)}' has none")
        b, p = prompt.shape
        bs = self.block_size
        nb = -(-length // bs)
        total = nb * bs
        z = jnp.concatenate([prompt.astype(jnp.int32),
                             jnp.full((b, total - p), self.mask_id, jnp.int32)], axis=1)
        cache = model.init_cache(b, total)

        def cond(c):
            j, _, _, done, _ = c
            return (j < nb) & ~(self.stop_at_eos & jnp.all(done))

        def body(c):
            j, z, cache, done, nfe = c
            start = j * bs
            zb = jax.lax.dynamic_slice_in_dim(z, start, bs, axis=1)
            eligible = start + jnp.arange(bs) >= p                  # [bs]: not the prompt

            def fill(zb):
                return self.inner.fill_block(CachedView(model, cache, start),
                                             jax.random.fold_in(key, j), zb, eligible, self.inner.steps)

            zb, n = jax.lax.cond(jnp.any(eligible), fill, lambda zb: (zb, jnp.int32(0)), zb)
            _, kv = model.decode_block(zb, cache, start)          # the clean block's keys/values
            cache = model.commit(cache, kv, start)
            z = jax.lax.dynamic_update_slice_in_dim(z, zb, start, axis=1)
            done = done | jnp.any(zb == self.eos_id, axis=1)
            return j + 1, z, cache, done, nfe + n + 1

        init = (jnp.int32(0), z, cache, jnp.zeros((b,), bool), jnp.int32(0))
        _, z, _, _, nfe = jax.lax.while_loop(cond, body, init)
        # after the first EOS (or in blocks never generated): EOS, never a mask
        return pad_after_eos(z[:, :length], p, self.eos_id, self.mask_id), nfe
