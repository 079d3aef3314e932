"""Self-speculative decoding of a causal masked-diffusion denoiser (``sampler=mdm_speculative``).

A denoiser trained with ``objective.mask_kind=causal`` and ``model.logit_shift`` (the code-edit
recipes adapted from SmolLM2) predicts canvas token ``j`` from the positions before it only.
So one forward over a window of the canvas does two jobs at once:

- **verify**: where the tokens before ``j`` are final, the prediction at ``j`` is exactly what
  strict left-to-right decoding (semi-AR blocks of one token) would write there;
- **draft**: where they are masks (or drafts), it is the denoiser's parallel guess, the
  masked-diffusion part of the model's training.

Each forward therefore accepts the drafted tokens that agree with the verified prediction, one
after another from the first undecided position, writes the verified prediction at the first
disagreement (or the first mask), and keeps the window's later predictions as the next drafts
only where the fixed position held a mask: a prediction that read a rejected draft is stale
and the position stays a mask (keeping stale drafts, as Jacobi iteration would, Santilli et al.
2023, finalised 1.07 tokens per forward on the edit recipe's val items instead of 1.3). That is
speculative decoding with the model as its own drafter (Leviathan et al. 2023; for diffusion
LMs, Self Speculative Decoding, Gao et al. 2025, arXiv 2510.04147, which verifies a tree of
drafts; here one chain). Under greedy tokens the output is **identical** to strict
left-to-right decoding of the same weights (tested), whatever the drafts are: the drafts only
decide how many tokens one forward finalises (at least one, as AR).

**The exact cache.** Every position reads only the positions before it, so the keys/values of
final positions never change: the prompt (less its last token, which the shift makes the first
canvas forward's input) is cached in one pass, and each forward runs ``model.decode`` over a
window of ``window`` input positions starting at the last final one, writing their keys/values
into the static cache; the next window starts at the position just fixed (whose input changed)
and reads only the cache slots before it, so slots written from drafts that were rejected are
never read. Cost per forward: ``window`` positions (not the canvas), every one attending to the
cache. (The cache is carried through the loop and both read and written each forward, so
XLA:CPU copies it each forward (visible as ``copy`` ops on the cache in the compiled loop), as
the AR sampler's first version did; with SmolLM2-135M a window-1 forward took 34.5 ms against
the AR sampler's 30.9 ms step on weights of the same shape, and the copy is the likely part of
the gap. A write-before-read attention path would remove it. Not built.)

Known canvas tokens (``infill``: the unchanged lines of an edit) are kept and accepted as they
come. Drafts: a prediction whose probability is below ``tau`` is left as a mask (a mask is read
as "unknown", which the denoiser was trained on; a wrong draft is read as a clean token).
``stop_at_eos``: a row stops once a final token is EOS (every later position becomes EOS).

Shapes: canvas ``z[B, L]``, prompt ``z[:, :start]``; the working buffer is ``[B, L + window]``
(the window never runs off its end) and the cache holds ``L + window`` slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.models.logits import suppress
from sandbox.samplers.mdm import MaskedDiffusionSampler


@dataclass(frozen=True)
class SelfSpeculative(MaskedDiffusionSampler):
    window: int = 4      # input positions per forward: the last final one and window - 1 drafts
    tau: float = 0.5     # a draft below this probability stays a mask
    precision: str = "greedy"
    mask_kind: str = "causal"  # what it needs; for_checkpoint sets the run's, which check() reads
    name: str = "mdm_speculative"
    uses_steps = False

    def check(self, **kw):
        # the base check ties stop_at_eos to semi-AR blocks; here a row stops at its own EOS
        MaskedDiffusionSampler.check(self.replace(stop_at_eos=False), **kw)
        if self.precision != "greedy":
            raise UserError(f"sampler=mdm_speculative verifies greedy tokens only (sampler.precision="
                            f"{self.precision}); set sampler.precision=greedy")
        if self.mask_kind != "causal":
            raise UserError("sampler=mdm_speculative needs a causal denoiser (a run trained with "
                            f"objective.mask_kind=causal); this run's is {self.mask_kind}")
        if self.window < 1:
            raise UserError(f"sampler.window={self.window} must be >= 1 (input positions per forward)")
        if not 0 <= self.tau <= 1:
            raise UserError(f"sampler.tau={self.tau} must be in [0, 1]")
        if self.block_size or self.cache != "none":
            raise UserError("sampler=mdm_speculative decodes left to right with its own exact cache: "
                            "leave sampler.block_size=0 and sampler.cache=none")

    def settings(self) -> dict:
        out = super().settings()
        for k in ("steps", "grid", "block_size", "temperature", "prompt_attention", "prompt_cache"):
            out.pop(k, None)
        return out

    def forward_plan(self, batch, length, prompt_len, nfe, computed=None):
        """The prompt pass (``prompt_len - 1`` positions), then ``nfe - 1`` forwards of ``window``
        positions, each attending to about the whole canvas (the cache read); every window
        position is drawn (verified or drafted)."""
        nfe = float(nfe)
        if not nfe:
            return []
        head = float(max(prompt_len - 1, 0))
        out = [(1.0, batch, head, head)] if head else []
        steps = nfe - (1.0 if head else 0.0)
        return out + ([(steps, batch, float(self.window), float(length))] if steps > 0 else [])

    def infill_cost(self, model, key, z, start: int):
        """(tokens[B, L], nfe, computed positions); the module doc's loop. ``key`` reaches the
        draw, which is greedy (check refuses any other precision)."""
        if not getattr(model, "logit_shift", False) or not hasattr(model, "decode"):
            raise UserError("sampler=mdm_speculative verifies with shifted logits (a prediction at "
                            "position j from the positions before j): the run needs model.logit_shift="
                            "true and a backbone with a KV cache (model.decode)")
        if start < 1:
            raise UserError("sampler=mdm_speculative needs a prompt of at least one token")
        z = z.astype(jnp.int32)
        b, length = z.shape
        w = self.window
        pad = jnp.full((b, w), self.mask_id, jnp.int32)
        u0 = jnp.concatenate([z, pad], axis=1)                               # [B, L + W]
        known = jnp.concatenate([z != self.mask_id, jnp.zeros((b, w), bool)], axis=1)
        pos = jnp.arange(length + w)
        known = known | (pos < start)[None, :]
        cache = model.init_cache(b, length + w)
        todo0 = jnp.any(~known[:, start:length])
        head = start - 1                                 # the prompt's last token leads the canvas
        if head:
            cache = jax.lax.cond(todo0, lambda c: model.decode(z[:, :head], c, 0)[1], lambda c: c, cache)
        banned = (self.mask_id, *self.banned_ids)

        def stopped(u, fin):
            """A row with a final generated EOS is finished (``stop_at_eos``)."""
            if not self.stop_at_eos:
                return fin
            eos = jnp.any((u == self.eos_id) & (pos >= start)[None, :] & (pos[None, :] < fin[:, None]), 1)
            return jnp.where(eos, length, fin)

        def cond(c):
            return jnp.any(c[1] < length)

        def body(c):
            u, fin, cache, nfe = c
            lo = jnp.min(fin) - 1                        # input position that predicts min(fin)
            x = jax.lax.dynamic_slice_in_dim(u, lo, w, axis=1)
            logits, cache = model.decode(x, cache, lo)   # logits[:, i] predict position lo + 1 + i
            # greedy tokens and their probability: the masked-diffusion samplers' own draw
            y, conf = self.draw(key, suppress(logits.astype(jnp.float32), banned))
            t = lo + 1 + jnp.arange(w)                                       # [W] target positions
            cur = jax.lax.dynamic_slice_in_dim(u, lo + 1, w, axis=1)
            kn = jax.lax.dynamic_slice_in_dim(known, lo + 1, w, axis=1)
            todo = (t[None, :] >= fin[:, None]) & (t[None, :] < length)      # undecided, in the canvas
            bad = todo & ~kn & (cur != y)                # a mask or a draft that the verify rejects
            hit = jnp.any(bad, 1)
            first = jnp.where(hit, jnp.argmax(bad, 1), w)                    # [B]
            i = jnp.arange(w)[None, :]
            fix = todo & (i == first[:, None])
            later = todo & (i > first[:, None]) & ~kn
            # the predictions after the fixed position read its old value: a fresh draft where
            # that was a mask, a stale one (kept as a mask, unknown) where it was a rejected draft
            held = jnp.take_along_axis(cur, jnp.minimum(first, w - 1)[:, None], axis=1)[:, 0]
            fresh = (held == self.mask_id)[:, None]
            draft = jnp.where(fresh & (conf >= self.tau), y, self.mask_id)
            new = jnp.where(fix, y, jnp.where(later, draft, cur))
            u = jax.lax.dynamic_update_slice_in_dim(u, new, lo + 1, axis=1)
            # final: everything before the fixed position and the fixed one. Not the known tokens
            # after it: their keys/values read the fixed position's old value, so the next
            # window, which starts at the fixed position, recomputes and accepts them
            fin = stopped(u, jnp.maximum(fin, jnp.minimum(lo + 1 + first + hit, length)))
            return u, fin, cache, nfe + 1

        fin0 = jnp.where(todo0, start, length) * jnp.ones((b,), jnp.int32)
        u, _, _, n = jax.lax.while_loop(cond, body, (u0, fin0, cache, jnp.int32(0)))
        out = u[:, :length]
        if self.stop_at_eos:
            out = self.pad_after_eos(out, start)
        n0 = jnp.int32(1 if head else 0) * todo0.astype(jnp.int32)
        return out, n + n0, n0 * head + n * w
