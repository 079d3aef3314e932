"""Autoregressive next-token objective: exact cross-entropy.

Both objectives score the same ``L`` tokens of a window with the same context (the window
only), so their nats per token compare directly: the AR model reads ``[BOS, x_0 ..
x_{L-2}]`` under a causal mask and predicts ``x_0 .. x_{L-1}``; the first prediction is
unconditional, exactly like a diffusion model's view of the window.

loss = -1/(B L) sum_{b,l} log p(x_l | BOS, x_<l)   (nats per token)

Conditional data (``cond[B, L]`` True on a prompt, ``sandbox.tasks.edits.task``): the same
forward, averaged over the positions outside the prompt only, i.e. -log p(target | prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from sandbox.objectives.base import Objective, seq_mean, token_nll


@dataclass(frozen=True)
class AR(Objective):
    bos_id: int = -1
    name: str = "ar"
    mask_kind: str = "causal"
    exact: bool = True
    flops_factor: float = 1.0
    conditional: bool = True
    sampler_family: str = "ar"
    default_sampler: str = "ar"
    edit_sampler: str | None = "ar"

    def bind(self, tokenizer):
        return self.replace(bos_id=int(tokenizer.bos_id))

    def inputs(self, tokens):
        """tokens[B, L] -> model inputs [B, L]: BOS then the first L-1 tokens."""
        bos = jnp.full((tokens.shape[0], 1), self.bos_id, tokens.dtype)
        return jnp.concatenate([bos, tokens[:, :-1]], axis=1)

    def per_token(self, model, tokens):
        """Per-position NLL [B, L] in nats."""
        assert self.bos_id >= 0, "call objective.bind(tokenizer) first"
        logits = model(self.inputs(tokens), mask_kind=self.mask_kind)
        return token_nll(logits, tokens)

    def loss(self, model, tokens, key, cond=None):
        del key
        with self.aux_losses() as aux:
            nll = self.per_token(model, tokens)
        loss = jnp.mean(nll) if cond is None else jnp.sum(jnp.where(cond, 0.0, nll)) / jnp.sum(~cond)
        return self.add_aux(loss, {"nll": loss}, aux)

    def nll(self, model, tokens, key, draws: int | None = None, cond=None):
        del key, draws  # exact: one draw
        return seq_mean(self.per_token(model, tokens), cond)[None, :]  # [1, B]
