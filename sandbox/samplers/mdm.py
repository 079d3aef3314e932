"""Masked-diffusion samplers for checkpoints trained with ``objective=mdlm``.

Every sampler fills a canvas ``[prompt ; MASK * (length - P)]``: prompt tokens are never
touched and the output contains no mask token. ``infill(model, key, z, start)`` is the
general form (``generate`` calls it): the canvas may also hold known tokens after
``start``, which are kept, and only its mask tokens are generated (code edits: the unchanged
lines are known). The generated region ``[start, L)`` can be split into
semi-autoregressive blocks (``block_size``; 0 = one block) filled left to right; the total
``steps`` are shared equally between blocks. The model reads the whole canvas with a
bidirectional mask; the SUBS parameterisation means the mask token is never predicted and
revealed tokens are never changed again.

Tokens are always drawn *two-stage*: decide which positions to reveal, then draw their
tokens from the unscaled model distribution with the exact categorical
(``categorical.sample``), never the scaled single float32 categorical.

- ``mdm_ancestral``: the reverse process of MDLM (Sahoo et al. 2024, eq. 7 with SUBS): from
  time t to s each masked position is revealed with probability
  ``(alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t`` (linear alpha; the ``grid`` sets
  the times). When a step reveals nothing in the whole batch the canvas is unchanged, so
  the next step reuses the logits instead of calling the model (the MDLM "caching"
  trick); NFE counts only real calls.
- ``mdm_first_hitting``: the first-hitting sampler (Zheng et al. 2024, Alg. 1): the next
  reveal time is drawn exactly and one uniformly chosen masked position is revealed per
  call. The backbone is not time-conditioned, so the drawn time does not change the
  model's output and is not computed; NFE = number of generated tokens.
- ``mdm_topk_confidence``: LLaDA low-confidence remasking (Nie et al. 2025, Alg. 4/5): draw
  a token at every masked position, keep the k with the highest model probability, leave
  the rest masked; k per step follows the grid so that ``steps`` steps fill the block.
- ``mdm_threshold``: confidence-threshold parallel decoding (Fast-dLLM, Wu et al. 2025):
  reveal every masked position whose drawn token has probability >= tau, and at least the
  most confident one per step; runs until the block is full (``steps`` is not used).

Time grids: ``uniform`` t_i = 1 - i/n, ``cosine`` t_i = cos(pi/2 * i/n) (few tokens first,
more later, as in MaskGIT).

**The prompt cache** (``prompt_attention="self"``, set from a run trained with
``objective.prompt_attention=self`` by :meth:`MaskedDiffusionSampler.for_checkpoint`): the
prompt ``[0, start)`` attends only to itself (``attention.PromptMask``), so its keys and
values at every layer do not depend on the canvas. ``infill`` computes them once (one
``decode_block`` over the prompt, counted in NFE) and every step then reads only the canvas
``[start, L)`` against them (``decode_block`` over the canvas: :class:`CachedView`, the
same read-only-cache view block diffusion uses for its finished blocks). It is exact: the
canvas rows of a full forward under the prompt mask are the same function of the same
keys and values. ``prompt_cache=False`` runs each step as that full forward (the reference);
both run the inner loops on the canvas alone, so they draw the same random numbers and
produce the same tokens. ``prompt_attention="full"`` (every run trained without the option)
keeps the whole-canvas loop above unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.models.attention import PromptMask
from sandbox.models.logits import suppress
from sandbox.samplers.base import Sampler
from sandbox.samplers.categorical import sample

GRIDS = ("uniform", "cosine")
PROMPT_ATTENTION = ("full", "self")


def time_grid(n: int, kind: str):
    """Times [n + 1] from 1 down to 0."""
    i = jnp.arange(n + 1, dtype=jnp.float32) / n
    return 1.0 - i if kind == "uniform" else jnp.cos(0.5 * math.pi * i)


class CachedView:
    """What a sampler loop sees as ``model`` when it runs on a block ``z[B, T]`` at positions
    start..start+T-1 that reads a read-only cache of the positions before it: the block's
    logits from ``model.decode_block`` (bidirectional inside the block). Block diffusion's
    finished blocks and masked diffusion's prompt cache are both such a cache."""

    def __init__(self, model, cache, start):
        self.model, self.cache, self.start = model, cache, start
        self.vocab_size = model.vocab_size

    def __call__(self, z, mask_kind=None, **kw):
        del mask_kind, kw
        return self.model.decode_block(z, self.cache, self.start)[0]


class PromptMaskView:
    """The uncached reference of :class:`CachedView` for a prompt: the canvas ``z[B, L - P]``
    is read as the canvas rows of a full forward of ``[prompt ; z]`` under the prompt mask."""

    def __init__(self, model, prompt):
        self.model, self.prompt = model, prompt
        self.vocab_size = model.vocab_size

    def __call__(self, z, mask_kind=None, **kw):
        del mask_kind, kw
        b, p = self.prompt.shape
        cond = jnp.broadcast_to(jnp.arange(p + z.shape[1]) < p, (b, p + z.shape[1]))
        full = jnp.concatenate([self.prompt, z], axis=1)
        return self.model(full, mask_kind=PromptMask(cond))[:, p:]


def prompt_kv(model, prompt):
    """Per-layer keys/values of prompt[B, P] attending only to itself: ``decode_block`` of the
    prompt at start 0 with an empty cache (its logits are unused, and cut by XLA)."""
    return model.decode_block(prompt, model.init_cache(prompt.shape[0], 0), 0)[1]


@dataclass(frozen=True)
class MaskedDiffusionSampler(Sampler):
    steps: int = 64          # total denoising steps, shared by the blocks
    grid: str = "uniform"
    block_size: int = 0      # semi-autoregressive blocks over the generated region (0: one)
    temperature: float = 1.0
    precision: str = "exact"
    mask_id: int = -1
    banned_ids: tuple = ()   # BOS / PAD: never in the training data, never drawn
    prompt_attention: str = "full"  # "self": the run's prompt attends only to itself (module doc)
    prompt_cache: bool = True       # with "self": the exact prompt cache (False: full forwards)
    name: str = "mdm"
    family: str = "mdm"
    uses_steps = True

    def bind(self, tokenizer):
        banned = tuple(int(getattr(tokenizer, f)) for f in ("bos_id", "pad_id")
                       if getattr(tokenizer, f, None) is not None)
        return self.replace(mask_id=int(tokenizer.mask_id), banned_ids=banned)

    def check(self, *, family: str, length: int, prompt_len: int, objective: str | None = None) -> None:
        super().check(family=family, length=length, prompt_len=prompt_len, objective=objective)
        gen = length - prompt_len
        if self.grid not in GRIDS:
            raise UserError(f"sampler.grid: unknown value '{self.grid}' (choose uniform or cosine)")
        if self.block_size < 0 or self.block_size > gen:
            raise UserError(f"sampler.block_size={self.block_size} must be in [0, {gen}] "
                            "(0: one block over the generated tokens)")
        if self.uses_steps and not 1 <= self.steps <= gen:
            raise UserError(f"sampler.steps={self.steps} must be between 1 and the number of "
                            f"generated tokens ({gen})")
        if self.uses_steps and self.steps < self.n_blocks(gen):
            raise UserError(f"sampler.steps={self.steps} is fewer than the {self.n_blocks(gen)} blocks "
                            f"of sampler.block_size={self.block_size}; raise steps or block_size")
        if not self.temperature > 0:
            raise UserError(f"sampler.temperature={self.temperature} must be positive")
        if self.prompt_attention not in PROMPT_ATTENTION:
            raise UserError(f"sampler.prompt_attention: unknown value '{self.prompt_attention}' "
                            "(choose full or self)")

    def for_checkpoint(self, objective):
        """The settings a checkpoint fixes, whatever sampler was chosen: how its prompt was
        attended in training (``objective.prompt_attention``; ``full`` for objectives without it)."""
        return self.replace(prompt_attention=str(getattr(objective, "prompt_attention", "full")))

    def settings(self) -> dict:
        out = super().settings()
        if self.prompt_attention == "full":  # unchanged labels and file names for every earlier run
            out.pop("prompt_attention", None)
            out.pop("prompt_cache", None)
        return out

    def n_blocks(self, gen: int) -> int:
        return -(-gen // (self.block_size or gen))

    # -- shared pieces --------------------------------------------------------------------------
    def predict(self, model, z):
        """Logits [B, L, V] for canvas z, mask token suppressed (SUBS), temperature applied."""
        logits = model(z, mask_kind="bidirectional")
        logits = suppress(logits, (self.mask_id, *self.banned_ids))
        return logits if self.temperature == 1.0 else logits / jnp.float32(self.temperature)

    def draw(self, key, logits):
        """Exact token draw at every position and its model probability (confidence)."""
        x = sample(key, logits, self.precision)
        # p(x) = exp(logit_x - logsumexp): one reduction, no [B, L, V] log-softmax array
        picked = jnp.take_along_axis(logits, x[..., None], axis=-1)[..., 0]
        return x, jnp.exp(picked - jax.nn.logsumexp(logits, axis=-1))

    def generate(self, model, key, prompt, length: int):
        """prompt[B, P] -> (tokens[B, length], nfe): ``infill`` of ``[prompt ; MASK * (length - P)]``
        from ``start=P`` (one code path for both)."""
        b, p = prompt.shape
        z = jnp.concatenate([prompt.astype(jnp.int32), jnp.full((b, length - p), self.mask_id, jnp.int32)], 1)
        return self.infill(model, key, z, p)

    def infill(self, model, key, z, start: int):
        """Fill the mask tokens of a partly known canvas z[B, L] at positions >= ``start``;
        every other position (the prompt before ``start``, known tokens after it) is kept
        and read as context. Returns (tokens[B, L], nfe).

        Why: a code edit knows most of its output (the unchanged lines around the edit), and
        generating only the unknown positions is both the task and far cheaper. The blocks
        (``block_size``) and the shared ``steps`` are laid over [start, L) exactly as for
        ``generate``; each block reveals only its masked positions, and a block (or a row)
        with none is a no-op that costs no model call. ``start`` is static (a Python int).
        Mask tokens before ``start`` are left alone (and stay masks).

        With ``prompt_attention="self"`` the positions before ``start`` are the prompt, which
        attends only to itself: the loop runs on [start, L) alone, against the prompt's cached
        keys/values (``prompt_cache``, one extra model call, made only if anything is masked)
        or through full forwards under the prompt mask (module doc)."""
        z = z.astype(jnp.int32)
        if self.prompt_attention == "full" or start == 0:
            return self._fill_from(model, key, z, start)
        prompt, canvas = z[:, :start], z[:, start:]
        if not (self.prompt_cache and hasattr(model, "decode_block")):
            canvas, nfe = self._fill_from(PromptMaskView(model, prompt), key, canvas, 0)
            return jnp.concatenate([prompt, canvas], axis=1), nfe
        todo = jnp.any(canvas == self.mask_id)
        kv, n0 = jax.lax.cond(todo, lambda: (prompt_kv(model, prompt), jnp.int32(1)),
                              lambda: (model.init_cache(z.shape[0], start), jnp.int32(0)))
        canvas, nfe = self._fill_from(CachedView(model, kv, start), key, canvas, 0)
        return jnp.concatenate([prompt, canvas], axis=1), nfe + n0

    def _fill_from(self, model, key, z, start: int):
        """The block loop of ``infill`` over z[B, L] from ``start``: (tokens, nfe)."""
        length = z.shape[1]
        gen = length - start
        bs = self.block_size or gen
        n_blocks = self.n_blocks(gen)
        per_block = max(1, self.steps // n_blocks)
        pos = jnp.arange(length)

        def block(i, carry):
            z, nfe = carry
            lo = start + i * bs
            eligible = (pos >= lo) & (pos < jnp.minimum(lo + bs, length))
            z, n = self.fill_block(model, jax.random.fold_in(key, i), z, eligible, per_block)
            return z, nfe + n

        return jax.lax.fori_loop(0, n_blocks, block, (z, jnp.int32(0)))

    def fill_block(self, model, key, z, eligible, n_steps):  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Ancestral(MaskedDiffusionSampler):
    name: str = "mdm_ancestral"

    def fill_block(self, model, key, z, eligible, n_steps):
        ts = time_grid(n_steps, self.grid)
        b, l = z.shape
        logits0 = jnp.zeros((b, l, model.vocab_size), jnp.float32)

        def step(carry, xs):
            z, logits, dirty, nfe = carry
            t, s, k = xs
            logits, nfe = jax.lax.cond(dirty, lambda: (self.predict(model, z), nfe + 1),
                                       lambda: (logits, nfe))
            k1, k2 = jax.random.split(k)
            masked = (z == self.mask_id) & eligible
            p_reveal = jnp.where(s <= 0, 1.0, (t - s) / t)
            reveal = masked & (jax.random.uniform(k1, z.shape) < p_reveal)
            x = sample(k2, logits, self.precision)
            return (jnp.where(reveal, x, z), logits, jnp.any(reveal), nfe), None

        keys = jax.random.split(key, n_steps)
        todo = jnp.any((z == self.mask_id) & eligible)  # nothing masked (infill): no call at all
        (z, _, _, nfe), _ = jax.lax.scan(step, (z, logits0, todo, jnp.int32(0)),
                                         (ts[:-1], ts[1:], keys))
        return z, nfe


@dataclass(frozen=True)
class FirstHitting(MaskedDiffusionSampler):
    name: str = "mdm_first_hitting"
    uses_steps = False

    def fill_block(self, model, key, z, eligible, n_steps):
        del n_steps  # one token per call, as many calls as the block has positions
        b, l = z.shape
        bs = self.block_size or l

        def step(carry, k):
            z, nfe = carry
            cand = (z == self.mask_id) & eligible
            todo = jnp.any(cand)

            def reveal_one():
                k1, k2 = jax.random.split(k)
                x = sample(k2, self.predict(model, z), self.precision)
                pick = jnp.argmax(jnp.where(cand, jax.random.uniform(k1, z.shape), -1.0), axis=-1)
                one = (jnp.arange(l)[None, :] == pick[:, None]) & cand
                return jnp.where(one, x, z), nfe + 1

            return jax.lax.cond(todo, reveal_one, lambda: (z, nfe)), None

        (z, nfe), _ = jax.lax.scan(step, (z, jnp.int32(0)), jax.random.split(key, min(bs, l)))
        return z, nfe


def _rank(score):
    """Rank of each entry in descending order along the last axis (0 = largest)."""
    return jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)


@dataclass(frozen=True)
class TopKConfidence(MaskedDiffusionSampler):
    name: str = "mdm_topk_confidence"

    def fill_block(self, model, key, z, eligible, n_steps):
        # Per row: only the masked positions count (infill keeps known tokens), so k [B] per
        # step. done_by[-1] = n_gen reveals every masked position by the last step; a row
        # with none takes nothing, and a step where no row takes anything calls no model.
        n_gen = jnp.sum((z == self.mask_id) & eligible, axis=-1)                       # [B]
        ts = time_grid(n_steps, self.grid)
        done_by = jnp.round(n_gen[None, :] * (1.0 - ts)[:, None]).astype(jnp.int32)   # [n + 1, B]
        done_by = done_by.at[-1].set(n_gen)

        def step(carry, xs):
            z, nfe = carry
            k_i, k = xs                                                                # k_i [B]

            def reveal():
                x, conf = self.draw(k, self.predict(model, z))
                cand = (z == self.mask_id) & eligible
                take = cand & (_rank(jnp.where(cand, conf, -1.0)) < k_i[:, None])
                return jnp.where(take, x, z), nfe + 1

            return jax.lax.cond(jnp.any(k_i > 0), reveal, lambda: (z, nfe)), None

        (z, nfe), _ = jax.lax.scan(step, (z, jnp.int32(0)),
                                   (done_by[1:] - done_by[:-1], jax.random.split(key, n_steps)))
        return z, nfe


@dataclass(frozen=True)
class Threshold(MaskedDiffusionSampler):
    tau: float = 0.9
    name: str = "mdm_threshold"
    uses_steps = False

    def check(self, **kw):
        super().check(**kw)
        if not 0 < self.tau <= 1:
            raise UserError(f"sampler.tau={self.tau} must be in (0, 1]")

    def fill_block(self, model, key, z, eligible, n_steps):
        del n_steps

        def cond(c):
            return jnp.any((c[0] == self.mask_id) & eligible)

        def body(c):
            z, nfe = c
            x, conf = self.draw(jax.random.fold_in(key, nfe), self.predict(model, z))
            cand = (z == self.mask_id) & eligible
            score = jnp.where(cand, conf, -1.0)
            best = jnp.argmax(score, axis=-1)
            take = cand & ((score >= self.tau) | (jnp.arange(z.shape[1])[None, :] == best[:, None]))
            return jnp.where(take, x, z), nfe + 1

        return jax.lax.while_loop(cond, body, (z, jnp.int32(0)))
