"""What every sampler provides, and how it is compiled.

A sampler is a frozen dataclass of settings. ``generate(model, key, prompt, length)`` is a
pure, traceable function: ``prompt[B, P]`` (``P`` may be 0) -> ``(tokens[B, length], nfe)``
where ``tokens[:, :P] == prompt`` and ``nfe`` is the number of backbone forward passes it
made (an int32 scalar). Loops are ``lax.scan`` / ``lax.while_loop``: one compiled function
per (sampler, batch, prompt length, length), never a Python loop per step. Masked-diffusion
samplers also have ``infill(model, key, z, start)`` (a canvas with known tokens after the
prompt; ``samplers/mdm.py``).

``family`` says which checkpoints it can read: those of every objective whose
``sampler_family`` is the same (``ar``: left to right; ``mdm``: any-order masked
diffusion; ``bd3lm``: block diffusion). The objective declares it, so a new objective
pairs with the existing samplers without a table here. ``bind`` copies in the
tokenizer's special ids; ``for_checkpoint(objective)`` copies in what the run's training
fixes (masked diffusion: how the prompt was attended); ``check`` raises a one-line
UserError for settings that cannot work (a sampler of another family, steps out of range,
a prompt longer than the output ...).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from sandbox.core.errors import UserError
from sandbox.samplers.categorical import check_precision


class Sampler:
    name: str = "sampler"
    family: str = "ar"
    precision: str = "exact"

    @property
    def pads_after_eos(self) -> bool:
        """True when every output position after a row's first EOS is EOS padding, not text
        (``stop_at_eos``; block diffusion always): quality statistics read up to that EOS."""
        return bool(getattr(self, "stop_at_eos", False))

    def bind(self, tokenizer) -> Sampler:
        return self

    def for_checkpoint(self, objective) -> Sampler:
        """A copy with the settings the run's training fixes (not defaults: applied to a chosen
        sampler too). Masked diffusion reads ``objective.prompt_attention`` here."""
        return self

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def check(self, *, family: str, length: int, prompt_len: int, objective: str | None = None) -> None:
        """``family``: the ``sampler_family`` of the run's objective (``objective``: its name,
        for the message)."""
        check_precision(self.precision)
        if family != self.family:
            raise UserError(f"sampler={self.name} reads {self.family} checkpoints but this run was trained "
                            f"with objective={objective or '?'} (sampler family {family}); pick a "
                            f"{family} sampler (conf/sampler/)")
        if length < 1:
            raise UserError(f"sampler length={length} must be at least 1")
        if prompt_len >= length:
            raise UserError(f"prompt of {prompt_len} tokens is not shorter than the output length "
                            f"{length}; raise length or shorten the prompt")

    def settings(self) -> dict:
        """JSON-ready settings (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.name.startswith("_"):
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def forward_plan(self, batch: int, length: int, prompt_len: int, nfe: float,
                     computed: float | None = None) -> list[tuple[float, int, float, float]]:
        """The forwards a call made, for the roofline latency model (``analysis.roofline``,
        ``sandbox.core.flops.forward_work``): ``[(count, batch, q, kv[, drawn])]``, ``count``
        passes of ``batch`` rows that compute ``q`` positions each, every position attending to
        ``kv`` key positions, after which the sampler draws tokens at ``drawn`` positions per row
        (default ``q``: every computed position). ``nfe`` and ``computed`` (token positions
        computed, where the sampler counts them) are what the call reported. Default: ``nfe``
        full forwards over the output."""
        return [(float(nfe), batch, float(length), float(length))]

    def generate(self, model, key, prompt, length: int):  # pragma: no cover - interface
        raise NotImplementedError


def compile_sampler(sampler: Sampler, graphdef, length: int, cost: bool = False):
    """jit(params, key, prompt[B, P]) -> (tokens[B, length], nfe) for this sampler; ``cost``:
    (tokens, nfe, recomputed) for a sampler with ``generate_cost`` (the token positions its
    model calls computed; masked diffusion's block caches reduce it)."""

    def fn(params, key, prompt):
        model = nnx.merge(graphdef, params)
        if cost and hasattr(sampler, "generate_cost"):
            return sampler.generate_cost(model, key, prompt, length)
        return sampler.generate(model, key, prompt, length)

    return jax.jit(fn)
