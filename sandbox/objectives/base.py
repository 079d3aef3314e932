"""What every objective provides, and the checks that make a wrong pairing impossible.

An objective is a frozen dataclass with no parameters. It owns the corruption process,
the special tokens it needs (bound from the tokenizer with :meth:`Objective.bind`), the
training loss and a likelihood figure comparable across objectives:

- ``loss(model, tokens[B, L], key) -> (scalar, metrics)``: the training loss, nats/token.
- ``nll(model, tokens[B, L], key, draws) -> nats[K, B]``: per-sequence negative log-likelihood
  in nats per token for ``K`` independent draws (``K = 1`` for exact objectives). For a
  diffusion objective this is an upper bound (NELBO) and the ``K`` draws let the
  evaluator report a Monte-Carlo standard error.
- ``mask_kind``: the attention mask it needs from the backbone.
- ``conditional``: whether ``loss`` / ``nll`` take ``cond[B, L]`` (True on prompt positions,
  which are clean context, never corrupted or scored; ``sandbox.tasks.edits.task``).
- ``batch_fields`` / ``required_fields``: the batch keys besides ``tokens`` that ``loss`` and
  ``nll`` accept as keyword arguments, and those they cannot do without; the trainer checks
  them against the batch source's ``fields`` (``sandbox.core.build.check_fields``).
- ``flops_factor``: forward cost of one training token relative to one backbone token
  (2 for block diffusion's doubled input), used for compute-matched budgets.

It also **describes itself** to the rest of the code, so that adding an objective is one
class plus one YAML file (``docs/extending.md``), with no table of names elsewhere:

- ``exact``: its ``nll`` is the exact likelihood (True) or an upper bound (False); written
  as ``bound`` (``exact`` | ``upper``) into every evaluation and the run's meta line.
- ``label``: its short name in reports (``bd3lm(16)``: the block size matters).
- ``sampler_family``: which samplers read its checkpoints (a sampler's ``family``).
- ``default_sampler``: ``conf/sampler/<name>.yaml`` used when no sampler is named.
- ``edit_sampler``: the default sampler of the code-edit evaluation (None: it does not
  train on conditional data).

Auxiliary losses: a backbone layer may record one during a forward pass (the MoE MLP's
load-balancing loss; ``sandbox.models.aux``). ``loss`` runs its model calls inside
``with self.aux_losses() as aux:`` and returns ``self.add_aux(loss, metrics, aux)``, which
adds ``sum weight * value`` to the loss and reports the unweighted sum as ``aux_loss``
(for dense backbones nothing is recorded and loss and metrics are unchanged). ``nll``
opens no tape: likelihoods never include it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from sandbox.core.errors import UserError
from sandbox.models import aux as aux_lib
from sandbox.models.attention import mask_name


class Objective:
    name: str = "objective"
    mask_kind: str = "causal"
    exact: bool = True
    flops_factor: float = 1.0
    conditional: bool = False
    batch_fields: tuple = ("cond",)
    required_fields: tuple = ()
    sampler_family: str = "ar"
    default_sampler: str = "ar"
    edit_sampler: str | None = None
    logit_shift_ok: bool = False  # reads logits position by position (a shifted head is allowed)

    @property
    def label(self) -> str:
        return self.name

    @property
    def bound(self) -> str:
        return "exact" if self.exact else "upper"

    def describe(self) -> dict:
        """What a result row records about the objective (reports read this, not a table)."""
        return {"objective": self.name, "objective_label": self.label, "bound": self.bound,
                "sampler_family": self.sampler_family}

    def bind(self, tokenizer) -> Objective:
        """Return a copy that knows the tokenizer's special token ids."""
        return self

    def check(self, model, tokenizer) -> None:
        """Raise UserError if this objective cannot train ``model`` with ``tokenizer``."""
        masks = getattr(model, "supported_masks", ())
        kind = mask_name(self.mask_kind)
        if kind not in masks:
            raise UserError(f"objective={self.name} needs a {kind} mask but model "
                            f"'{getattr(model, 'name', type(model).__name__)}' supports only "
                            f"{', '.join(masks) or 'none'}; pick another model or objective")
        if getattr(model, "logit_shift", False) and not self.logit_shift_ok:
            raise UserError(f"objective={self.name} reads logits in its own layout and does not support "
                            "model.logit_shift=true (masked diffusion does); set model.logit_shift=false")
        if model.vocab_size != tokenizer.vocab_size:
            raise UserError(f"model vocabulary {model.vocab_size} != tokenizer vocabulary "
                            f"{tokenizer.vocab_size}; build the model from the tokenizer")

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    @staticmethod
    def aux_losses():
        """Context manager: the auxiliary losses the backbone records inside it."""
        return aux_lib.collect()

    @staticmethod
    def add_aux(loss, metrics: dict, tape) -> tuple:
        """(loss + weighted auxiliary losses, metrics + ``aux_loss``); unchanged if none."""
        if not tape:
            return loss, metrics
        return loss + tape.total(), {**metrics, "aux_loss": tape.raw()}


def seq_mean(values, cond=None):
    """Per-sequence mean of values[B, L] over the positions outside the prompt (all if cond is
    None) -> [B]."""
    if cond is None:
        return jnp.mean(values, axis=-1)
    return jnp.sum(jnp.where(cond, 0.0, values), axis=-1) / jnp.maximum(jnp.sum(~cond, axis=-1), 1)


def token_nll(logits, targets):
    """-log softmax(logits)[targets] in float32. logits[..., V], targets[...] -> [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def bits_per_byte(nats_per_token: float, tokens_per_byte: float) -> float:
    return float(nats_per_token) * float(tokens_per_byte) / math.log(2.0)
