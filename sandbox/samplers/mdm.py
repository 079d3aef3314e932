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
  reveal every masked position whose drawn token has probability >= tau, and at least one
  more per step; runs until the block is full (``steps`` is not used). ``order`` picks that
  one: ``confidence`` (Fast-dLLM: the most confident) or ``random`` (uniform over the masked
  positions: the first-hitting sampler's rule); ``auto`` (default) is ``confidence`` for
  greedy tokens (``precision=greedy``, as Fast-dLLM and LLaDA evaluate) and ``random`` for
  drawn ones. Why: with drawn tokens, taking the position whose *draw* is most probable
  selects the draws that landed on a mode, and on a weak model the mode (a space in code)
  feeds itself: the demo model's samples were 100% spaces (unigram entropy 0.004 bits
  against 4.0 for held-out text; ``docs/design.md``, "The threshold collapse"). The
  uniform pick keeps the model's distribution; only the reveals above ``tau`` are
  approximate (each is off by at most ``1 - tau``).

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

**A causal denoiser's prompt cache** (``mask_kind="causal"``, from a run trained with
``objective.mask_kind=causal``): every position reads only the positions before it, so the
prompt's keys and values never depend on the canvas either. ``infill`` computes them once
with ``model.decode`` over the prompt and every step then runs the canvas alone through
``model.decode`` against that cache (:class:`CausalCachedView`; the cache it would write is
dropped). The cached paths return each position's own logits, so under ``model.logit_shift``
the prompt's last token stays out of the cache and each step reads ``[last ; canvas[:-1]]``
one position earlier, whose own logits are the canvas's shifted ones. Exact
for the same reason as above; ``prompt_cache=False`` is the full-forward reference, its loop
also on the canvas alone, so both draw the same random numbers.

**Approximate block caches** (``cache=prefix|dual|causal``, with semi-AR blocks; Fast-dLLM, Wu et
al. 2025, sec. 3.2-3.3): at the start of each block one *refresh* forward of the whole canvas
(bidirectional, as the model was trained) gives every position's keys and values; the block's
steps then read them instead of recomputing them. ``prefix`` reuses the positions before the
block and recomputes the block and the masked suffix after it at every step (queries over
[lo, L)); ``dual`` also reuses the suffix's, so a step computes only the block's ``block_size``
tokens (``Transformer.decode_block(..., around=True)``). Approximate because the reused keys
were computed while the block was still masked (and, for ``prefix`` with a bidirectionally
attended prompt, the prompt's too); ``cache=none`` stays the exact reference. The refreshes
count in the NFE; ``infill_cost`` / ``generate_cost`` also return the token positions the
calls computed (``nfe x L`` without a cache). A prefix block with only the exact prompt cache
before it needs no refresh, so one block is ``cache=none`` token for token. ``cache=causal``
reads the model block-causally instead: a block sees only the finished blocks, each computed
once when it is finished (no refresh); on a block-causal model that is block diffusion's exact
cache (``_fill_block_causal``). Block diffusion (``objective=bd3lm``, ``samplers/bd3lm.py``)
has an exact block cache and stays that family's reference.

**Variable length** (``stop_at_eos``, with semi-AR blocks; the rule of BD3LM, Arriola et al.
2025): once every row has produced EOS in a finished block the later blocks are skipped (no
model call), and ``generate`` sets every position after a row's first EOS, and every block
never generated, to EOS. Without blocks the whole canvas is one block, so the rule would
save nothing: ``check`` refuses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core import prng
from sandbox.core.errors import UserError
from sandbox.models.attention import PromptMask
from sandbox.models.logits import suppress
from sandbox.samplers.base import Sampler
from sandbox.samplers.categorical import sample

GRIDS = ("uniform", "cosine")
PROMPT_ATTENTION = ("full", "self")
CACHES = ("none", "prefix", "dual", "causal")


def time_grid(n: int, kind: str):
    """Times [n + 1] from 1 down to 0."""
    i = jnp.arange(n + 1, dtype=jnp.float32) / n
    return 1.0 - i if kind == "uniform" else jnp.cos(0.5 * math.pi * i)


def pad_after_eos(z, start: int, eos_id: int, mask_id: int):
    """z[B, L] with every generated position (>= start) after a row's first generated EOS, and
    every position of a block never generated (still a mask), set to EOS: the output of
    ``stop_at_eos`` here and in block diffusion. An EOS in the prompt ends nothing."""
    gen = jnp.arange(z.shape[1])[None, :] >= start
    eos = gen & (z == eos_id)
    after = (jnp.cumsum(eos, axis=1) - eos) > 0
    return jnp.where(gen & (after | (z == mask_id)), eos_id, z)


class CachedView:
    """What a sampler loop sees as ``model`` when it runs on a block ``z[B, T]`` at positions
    start..start+T-1 that reads a read-only cache of the positions before it: the block's
    logits from ``model.decode_block`` (bidirectional inside the block). Block diffusion's
    finished blocks and masked diffusion's prompt cache are both such a cache; ``around``
    also reads the cache after the block (the approximate dual cache, ``sampler.cache``)."""

    def __init__(self, model, cache, start, around: bool = False):
        self.model, self.cache, self.start, self.around = model, cache, start, around
        self.vocab_size = model.vocab_size

    def __call__(self, z, mask_kind=None, **kw):
        del mask_kind, kw
        if self.around:
            return self.model.decode_block(z, self.cache, self.start, around=True)[0]
        return self.model.decode_block(z, self.cache, self.start)[0]


class PromptMaskView:
    """The uncached reference of :class:`CachedView` for a prompt: the canvas ``z[B, L - P]``
    is read as the canvas rows of a full forward of ``[prompt ; z]`` under the prompt mask
    (``causal``: under the causal mask, the reference of :class:`CausalCachedView`)."""

    def __init__(self, model, prompt, causal: bool = False):
        self.model, self.prompt, self.causal = model, prompt, causal
        self.vocab_size = model.vocab_size

    def __call__(self, z, mask_kind=None, **kw):
        del mask_kind, kw
        b, p = self.prompt.shape
        full = jnp.concatenate([self.prompt, z], axis=1)
        if self.causal:
            return self.model(full, mask_kind="causal")[:, p:]
        cond = jnp.broadcast_to(jnp.arange(p + z.shape[1]) < p, (b, p + z.shape[1]))
        return self.model(full, mask_kind=PromptMask(cond))[:, p:]


class CausalCachedView:
    """A causal denoiser's canvas ``z[B, T]`` read against its prompt's cache (``model.decode``,
    causal inside the canvas). ``lead[B, 0 or 1]``: the prompt tokens not in the cache; with one
    (``model.logit_shift``) each forward reads ``[lead ; z[:, :-1]]`` one position earlier, whose
    own logits are the canvas's shifted ones."""

    def __init__(self, model, cache, lead, start: int):
        self.model, self.cache, self.lead, self.start = model, cache, lead, start
        self.vocab_size = model.vocab_size

    def __call__(self, z, mask_kind=None, **kw):
        del mask_kind, kw
        n = self.lead.shape[1]
        x = jnp.concatenate([self.lead, z[:, :-1]], axis=1) if n else z
        return self.model.decode(x, self.cache, self.start - n)[0]


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
    mask_kind: str = "bidirectional"  # the run's denoiser mask (objective.mask_kind; for_checkpoint sets it)
    cache: str = "none"      # block cache: none | prefix | dual | causal (module doc)
    stop_at_eos: bool = False  # semi-AR blocks: stop after the block in which every row has EOS
    eos_id: int = -1
    name: str = "mdm"
    family: str = "mdm"
    uses_steps = True

    def bind(self, tokenizer):
        banned = tuple(int(getattr(tokenizer, f)) for f in ("bos_id", "pad_id")
                       if getattr(tokenizer, f, None) is not None)
        return self.replace(mask_id=int(tokenizer.mask_id), banned_ids=banned,
                            eos_id=int(getattr(tokenizer, "eos_id", -1)))

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
        if self.cache not in CACHES:
            raise UserError(f"sampler.cache: unknown value '{self.cache}' "
                            "(choose none, prefix, dual or causal)")
        if self.cache == "causal" and prompt_len % max(self.block_size, 1):
            raise UserError(f"sampler.cache=causal: the prompt ({prompt_len} tokens) must fill whole "
                            f"blocks of sampler.block_size={self.block_size}, as in block diffusion")
        if self.stop_at_eos and not self.block_size:
            raise UserError("sampler.stop_at_eos stops after a semi-AR block: set sampler.block_size")
        if self.cache != "none" and self.mask_kind != "bidirectional":
            raise UserError(f"sampler.cache={self.cache} reads blocks bidirectionally but the run's denoiser "
                            f"is {self.mask_kind} (objective.mask_kind); use sampler.cache=none")
        if self.cache != "none" and (not self.block_size or gen % self.block_size):
            raise UserError(f"sampler.cache={self.cache} refreshes once per semi-AR block: set "
                            f"sampler.block_size to a divisor of the {gen} generated tokens "
                            f"(now {self.block_size})")

    def for_checkpoint(self, objective):
        """The settings a checkpoint fixes, whatever sampler was chosen: how its prompt was
        attended in training (``objective.prompt_attention``; ``full`` for objectives without it)
        and its denoiser's mask (``objective.mask_kind`` of a masked-diffusion run)."""
        mdm = getattr(objective, "sampler_family", "") == "mdm"
        kind = getattr(objective, "mask_kind", None) if mdm else None
        return self.replace(prompt_attention=str(getattr(objective, "prompt_attention", "full")),
                            mask_kind=kind if kind in ("bidirectional", "causal") else "bidirectional")

    def settings(self) -> dict:
        out = super().settings()
        if self.prompt_attention == "full":  # unchanged labels and file names for every earlier run
            out.pop("prompt_attention", None)
            out.pop("prompt_cache", None)
        if self.cache == "none":
            out.pop("cache", None)
        if self.mask_kind == "bidirectional":
            out.pop("mask_kind", None)
        if not self.stop_at_eos:
            out.pop("stop_at_eos", None)
        out.pop("eos_id", None)
        return out

    def n_blocks(self, gen: int) -> int:
        return -(-gen // (self.block_size or gen))

    # -- shared pieces --------------------------------------------------------------------------
    def predict(self, model, z):
        """Logits [B, L, V] for canvas z, mask token suppressed (SUBS), temperature applied."""
        logits = model(z, mask_kind=self.mask_kind)
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
        return self.generate_cost(model, key, prompt, length)[:2]

    def generate_cost(self, model, key, prompt, length: int):
        """``generate`` that also returns the token positions computed (``infill_cost``)."""
        b, p = prompt.shape
        z = jnp.concatenate([prompt.astype(jnp.int32), jnp.full((b, length - p), self.mask_id, jnp.int32)], 1)
        z, nfe, recomputed = self.infill_cost(model, key, z, p)
        return (self.pad_after_eos(z, p) if self.stop_at_eos else z), nfe, recomputed

    def forward_plan(self, batch, length, prompt_len, nfe, computed=None):
        """``nfe`` passes over the whole canvas, or, where the call counted the positions it
        computed (``infill_cost``: a block cache recomputes part of the canvas, a prompt cache
        leaves the prompt out), ``nfe`` passes of ``computed / nfe`` positions each, every one
        attending to the whole canvas (the cache read)."""
        nfe = float(nfe)
        if not nfe:
            return []
        q = float(length) if computed is None else float(computed) / nfe
        return [(nfe, batch, q, float(length))]

    def pad_after_eos(self, z, start: int):
        return pad_after_eos(z, start, self.eos_id, self.mask_id)

    def _stopped(self, done):
        """True once every row has produced EOS (``stop_at_eos``); the later blocks are skipped."""
        return jnp.all(done) if self.stop_at_eos else jnp.bool_(False)

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
        return self.infill_cost(model, key, z, start)[:2]

    def infill_cost(self, model, key, z, start: int):
        """``infill`` that also returns how many token positions its model calls computed:
        (tokens[B, L], nfe, recomputed); ``recomputed`` = nfe x L for full forwards (the
        measure ``sampler.cache`` reduces)."""
        z = z.astype(jnp.int32)
        length = z.shape[1]
        if self.cache != "none":
            if not hasattr(model, "decode_block"):  # never fall back silently to the uncached loop
                raise UserError(f"sampler.cache={self.cache} needs a backbone with decode_block; model "
                                f"'{getattr(model, 'name', type(model).__name__)}' has none (use cache=none)")
            return self._fill_cached(model, key, z, start)
        prompted = self.prompt_attention == "self" or self.mask_kind == "causal"
        if not prompted or start == 0:
            z, nfe = self._fill_from(model, key, z, start)
            return z, nfe, nfe * length
        prompt, canvas = z[:, :start], z[:, start:]
        causal = self.mask_kind == "causal"
        if not (self.prompt_cache and hasattr(model, "decode" if causal else "decode_block")):
            view = PromptMaskView(model, prompt, causal=causal)
            canvas, nfe = self._fill_from(view, key, canvas, 0)
            return jnp.concatenate([prompt, canvas], axis=1), nfe, nfe * length
        view, computed = self._prompt_view(model, prompt, jnp.any(canvas == self.mask_id), length)
        canvas, nfe = self._fill_from(view, key, canvas, 0)
        n0 = (computed > 0).astype(jnp.int32)  # the prompt pass, made only if anything is masked
        return jnp.concatenate([prompt, canvas], axis=1), nfe + n0, computed + nfe * (length - start)

    def _prompt_view(self, model, prompt, todo, length: int):
        """(what the loop reads as the model over the canvas, positions the prompt pass computed):
        the prompt's exact cache, computed only when ``todo`` (module doc). A causal denoiser
        caches its prompt with ``model.decode``; under ``model.logit_shift`` the prompt's last
        token stays out of the cache and leads each canvas forward instead, so the forward's
        own logits are already the canvas's shifted ones."""
        b, start = prompt.shape

        def run(cached, n, empty):
            return jax.lax.cond(todo, lambda: (cached(), jnp.int32(n)), lambda: (empty, jnp.int32(0)))

        if self.mask_kind != "causal":
            kv, n = run(lambda: prompt_kv(model, prompt), start, model.init_cache(b, start))
            return CachedView(model, kv, start), n
        head = start - 1 if getattr(model, "logit_shift", False) else start
        empty = model.init_cache(b, length)
        if head == 0:
            return CausalCachedView(model, empty, prompt, start), jnp.int32(0)
        cache, n = run(lambda: model.decode(prompt[:, :head], empty, 0)[1], head, empty)
        return CausalCachedView(model, cache, prompt[:, head:], start), n

    def _fill_from(self, model, key, z, start: int):
        """The block loop of ``infill`` over z[B, L] from ``start``: (tokens, nfe)."""
        length = z.shape[1]
        gen = length - start
        bs = self.block_size or gen
        n_blocks = self.n_blocks(gen)
        per_block = max(1, self.steps // n_blocks)
        pos = jnp.arange(length)

        def block(i, carry):
            z, nfe, done = carry
            lo = start + i * bs
            eligible = (pos >= lo) & (pos < jnp.minimum(lo + bs, length))
            def fill(z):
                return self.fill_block(model, jax.random.fold_in(key, i), z, eligible, per_block)

            if not self.stop_at_eos:  # static: no per-block branch or EOS scan unless asked for
                z, n = fill(z)
                return z, nfe + n, done
            z, n = jax.lax.cond(jnp.all(done), lambda z: (z, jnp.int32(0)), fill, z)
            return z, nfe + n, done | jnp.any((z == self.eos_id) & eligible, axis=1)

        b = z.shape[0]
        z, nfe, _ = jax.lax.fori_loop(0, n_blocks, block, (z, jnp.int32(0), jnp.zeros((b,), bool)))
        return z, nfe

    def _fill_cached(self, model, key, z, start: int):
        """``infill`` with a block cache (module doc, "Approximate block caches"; ``causal`` is
        :meth:`_fill_block_causal`): per semi-AR block [lo, hi) one refresh forward of the
        canvas gives every position's keys/values; the block's steps then read those of the
        positions before it (``prefix``: the queries span [lo, L), so the masked suffix is
        recomputed every step) or on both sides (``dual``: only [lo, hi) is recomputed). With
        ``prompt_attention="self"`` the prompt's keys/values are exact and computed once.
        Returns (tokens[B, L], nfe, recomputed); nfe counts the refreshes.

        The blocks are unrolled at trace time because the prefix view's width shrinks block by
        block (shapes must be static); each block's steps stay one compiled loop."""
        if self.cache == "causal":
            return self._fill_block_causal(model, key, z, start)
        b, length = z.shape
        bs = self.block_size
        n_blocks = (length - start) // bs
        per_block = max(1, self.steps // n_blocks)
        nfe, recomputed, done = jnp.int32(0), jnp.int32(0), jnp.zeros((b,), bool)
        if self.prompt_attention == "self" and start > 0:
            todo = jnp.any(z[:, start:] == self.mask_id)
            kv_p, n0 = jax.lax.cond(todo, lambda: (prompt_kv(model, z[:, :start]), jnp.int32(1)),
                                    lambda: (model.init_cache(b, start), jnp.int32(0)))
            nfe, recomputed, first = n0, n0 * start, start
        else:
            kv_p, first = model.init_cache(b, 0), 0

        def refresh(z):  # [B, K, L, Dh] per layer: the prompt's (exact) and the rest's, read once
            kv = model.decode_block(z[:, first:], kv_p, first)[1]
            return [tuple(jnp.concatenate([a, c], axis=2) for a, c in zip(p, q)) for p, q in zip(kv_p, kv)]

        for i in range(n_blocks):
            lo, hi = start + i * bs, start + (i + 1) * bs
            end = length if self.cache == "prefix" else hi

            # a prefix block with nothing but the exact prompt before it reads no refresh: it is
            # the uncached loop's block (so one block is exactly cache=none)
            fresh = self.cache == "dual" or lo > first

            def run(z, lo=lo, end=end, i=i, fresh=fresh):
                view = (CachedView(model, refresh(z), lo, around=self.cache == "dual") if fresh
                        else CachedView(model, kv_p, lo) if lo > 0 else model)
                w = end - lo
                sub, n = self.fill_block(view, jax.random.fold_in(key, i), z[:, lo:end],
                                         jnp.arange(w) < bs, per_block)
                return z.at[:, lo:end].set(sub), n + int(fresh)

            todo = jnp.any(z[:, lo:hi] == self.mask_id) & ~self._stopped(done)
            z, n = jax.lax.cond(todo, run, lambda z: (z, jnp.int32(0)), z)
            done = done | jnp.any(z[:, lo:hi] == self.eos_id, axis=1)
            nfe = nfe + n
            cost = (length - first + (n - 1) * (end - lo)) if fresh else n * (end - lo)
            recomputed = recomputed + jnp.where(n > 0, cost, 0)
        return z, nfe, recomputed

    def _fill_block_causal(self, model, key, z, start: int):
        """``cache=causal``: the model is read block-causally (a block sees the finished blocks
        and itself, never the masked suffix; a finished block's keys/values are computed once,
        by one forward over it when it is finished, and written into a static cache with
        ``model.commit``). For a block-causal model (BD3LM's attention) this *is* the prefix
        refresh, exactly: block diffusion's cache (tests/test_block_cache.py: equal to
        ``samplers/bd3lm.py`` token for token). For a bidirectionally trained MDLM it is the
        cheapest approximation (dKV-Cache-like delayed caching, Ma et al. 2025): no full-length
        refresh, and every step computes only the block's tokens. The prompt fills whole
        blocks and is committed block by block; block keys are folded by the absolute block
        index, as block diffusion folds them. Returns (tokens[B, L], nfe, recomputed)."""
        b, length = z.shape
        bs = self.block_size
        if start % bs:
            raise UserError(f"sampler.cache=causal: the prompt ({start} tokens) must fill whole blocks "
                            f"of sampler.block_size={bs}")
        n_blocks = (length - start) // bs
        per_block = max(1, self.steps // n_blocks)
        cache = model.init_cache(b, length)

        def commit(cache, z, lo):  # the finished block's keys/values, as later blocks read them
            return model.commit(cache, model.decode_block(z[:, lo:lo + bs], cache, lo)[1], lo)

        for lo in range(0, start, bs):
            cache = commit(cache, z, lo)
        nfe, done = jnp.int32(start // bs), jnp.zeros((b,), bool)
        recomputed = jnp.int32(start)
        for i in range(n_blocks):
            lo, hi = start + i * bs, start + (i + 1) * bs

            def run(z, cache=cache, lo=lo, hi=hi):
                sub, n = self.fill_block(CachedView(model, cache, lo), jax.random.fold_in(key, lo // bs),
                                         z[:, lo:hi], jnp.ones((bs,), bool), per_block)
                return z.at[:, lo:hi].set(sub), n

            todo = jnp.any(z[:, lo:hi] == self.mask_id) & ~self._stopped(done)
            z, n = jax.lax.cond(todo, run, lambda z: (z, jnp.int32(0)), z)
            done = done | jnp.any(z[:, lo:hi] == self.eos_id, axis=1)
            nfe, recomputed = nfe + n, recomputed + n * bs
            if i + 1 < n_blocks:  # the last block is read by no one
                go = ~self._stopped(done)
                cache = jax.lax.cond(go, lambda c, z=z, lo=lo: commit(c, z, lo), lambda c: c, cache)
                nfe, recomputed = nfe + go.astype(jnp.int32), recomputed + go.astype(jnp.int32) * bs
        return z, nfe, recomputed

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
            reveal = masked & (prng.uniform(k1, z.shape) < p_reveal)
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
                pick = jnp.argmax(jnp.where(cand, prng.uniform(k1, z.shape), -1.0), axis=-1)
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


ORDERS = ("auto", "confidence", "random")


@dataclass(frozen=True)
class Threshold(MaskedDiffusionSampler):
    tau: float = 0.9
    order: str = "auto"  # the one reveal a step always makes: confidence | random | auto (module doc)
    name: str = "mdm_threshold"
    uses_steps = False

    def check(self, **kw):
        super().check(**kw)
        if not 0 < self.tau <= 1:
            raise UserError(f"sampler.tau={self.tau} must be in (0, 1]")
        if self.order not in ORDERS:
            raise UserError(f"sampler.order: unknown value '{self.order}' "
                            "(choose auto, confidence or random)")

    @property
    def pick(self) -> str:
        """The order ``auto`` resolves to: by confidence for greedy tokens, at random for drawn ones."""
        if self.order != "auto":
            return self.order
        return "confidence" if self.precision == "greedy" else "random"

    def settings(self) -> dict:
        out = super().settings()
        if self.pick == "confidence":  # Fast-dLLM's rule: unchanged labels for every earlier result
            out.pop("order")
        else:
            out["order"] = self.pick
        return out

    def reveal(self, key, logits, z, eligible):
        """One step's choice: (take bool[B, L], drawn tokens x[B, L], their probability conf[B, L]).
        ``take`` holds every eligible masked position whose draw has probability >= tau, and
        one more per row picked by ``order`` (``scripts/threshold_trace.py`` replays it)."""
        k, k_pos = jax.random.split(key) if self.pick == "random" else (key, None)
        x, conf = self.draw(k, logits)
        cand = (z == self.mask_id) & eligible
        score = jnp.where(cand, conf, -1.0)
        # the guaranteed reveal: the most confident position (Fast-dLLM), or a uniformly
        # chosen one (the first-hitting rule), which leaves the model's distribution unbiased
        rank = score if self.pick == "confidence" else jnp.where(cand, prng.uniform(k_pos, z.shape), -1.0)
        best = jnp.argmax(rank, axis=-1)
        take = cand & ((score >= self.tau) | (jnp.arange(z.shape[1])[None, :] == best[:, None]))
        return take, x, conf

    def fill_block(self, model, key, z, eligible, n_steps):
        del n_steps

        def cond(c):
            return jnp.any((c[0] == self.mask_id) & eligible)

        def body(c):
            z, nfe = c
            take, x, _ = self.reveal(jax.random.fold_in(key, nfe), self.predict(model, z), z, eligible)
            return jnp.where(take, x, z), nfe + 1

        return jax.lax.while_loop(cond, body, (z, jnp.int32(0)))
