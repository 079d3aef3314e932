"""Edit-native masked diffusion: learn *where* to rewrite a source canvas and *what* to write there.

The objective of ``data.format=native`` (``sandbox.tasks.edits.native`` lays the rows out): an
edit starts from the old text, so the model needs two skills, trained in one backbone and one
forward over ``2B`` rows:

* **Fill** (the masked-diffusion part): the edit canvas, whose rewritten slots are the canvas
  and everything else (prompt, kept lines, EOS tail) is clean context ``cond``; MDLM's
  conditional continuous-time NELBO over the slots (Sahoo et al. 2024, eq. 10; the conditional
  form of LLaDA's SFT, Nie et al. 2025, eq. 5), exactly :class:`~sandbox.objectives.MDLM`'s
  ``nelbo`` with ``cond``. It is an upper bound on ``-log p(slot text | prompt, location)``.
* **Locate** (a corruption of the old text toward the new one): the *uncorrupted* source
  canvas ``source`` goes in, and the target at each scored position (outside ``source_cond``)
  is ``[MASK]`` where the position is to be rewritten (``rewrite``) and the token itself
  elsewhere: the absorbing state read as "this token is not final". Cross-entropy, mean over
  the scored positions, weighted by ``locate_weight``. Like corrective training of visible
  tokens (arXiv 2512.15596) the model learns to doubt tokens it is shown, and like
  Seed Diffusion's edit-based corruption (arXiv 2508.02193) the corruption is not masking.
  It is a classifier, not a likelihood: ``nll`` reports the fill's bound only.

``[MASK]`` is not suppressed in the locate logits (it is the "rewrite" answer); the fill
logits suppress it as SUBS does. ``flops_factor = 2``: every row is read twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.models.logits import suppress
from sandbox.objectives.base import token_nll
from sandbox.objectives.mdlm import MDLM

FIELDS = ("cond", "source", "source_cond", "rewrite")


@dataclass(frozen=True)
class EditMDLM(MDLM):
    locate_weight: float = 1.0
    name: str = "edit_mdlm"
    flops_factor: float = 2.0
    batch_fields: ClassVar[tuple] = FIELDS       # every one of them is required
    required_fields: ClassVar[tuple] = FIELDS

    def __post_init__(self):
        super().__post_init__()
        if getattr(self, "prompt_attention", "full") != "full":
            raise UserError("objective.prompt_attention: edit_mdlm supports only full (its locate rows read "
                            "the source canvas through the prompt); leave it at full")

    def locate_loss(self, logits, source, source_cond, rewrite):
        """Mean cross-entropy of the keep-or-rewrite answer over the scored positions [B]."""
        target = jnp.where(rewrite, self.mask_id, source)
        ce = token_nll(logits, target)
        scored = ~source_cond
        return jnp.sum(jnp.where(scored, ce, 0.0), axis=-1) / jnp.maximum(jnp.sum(scored, axis=-1), 1)

    def loss(self, model, tokens, key, cond=None, source=None, source_cond=None, rewrite=None):
        assert self.mask_id >= 0, "call objective.bind(tokenizer) first"
        kt, km = jax.random.split(key)
        b = tokens.shape[0]
        t = self.sample_times(kt, b, self.t_min)
        z, masked = self.corrupt(km, tokens, t, cond)
        with self.aux_losses() as aux:
            logits = model(jnp.concatenate([z, source], axis=0), mask_kind=self.mask_kind)  # [2B, L, V]
        fill_logits, loc_logits = logits[:b], logits[b:]
        ce = token_nll(suppress(fill_logits, (self.mask_id,)), tokens)
        w = self.schedule.weight(jnp.maximum(t, 1e-12))[:, None]
        fill = jnp.sum(jnp.where(masked, w * ce, 0.0), axis=-1) / jnp.maximum(jnp.sum(~cond, axis=-1), 1)
        locate = self.locate_loss(loc_logits, source, source_cond, rewrite)
        nelbo, loc = jnp.mean(fill), jnp.mean(locate)
        return self.add_aux(nelbo + self.locate_weight * loc, {"nelbo": nelbo, "locate": loc}, aux)

    def nll(self, model, tokens, key, draws: int | None = None, cond=None, source=None, source_cond=None,
            rewrite=None):
        """The fill's bound (nats per slot token, module doc); the locate rows are not read."""
        return super().nll(model, tokens, key, draws, cond=cond)
