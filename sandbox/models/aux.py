"""Auxiliary losses that layers add to the training loss (e.g. MoE load balancing).

A layer calls ``record(value, weight)`` during its forward pass. Nothing is recorded unless
a ``collect()`` context is open, so evaluation, sampling and decoding (which open none) pay
nothing and keep the backbones pure. Objectives open one around the model calls of their
``loss`` (``Objective.aux_losses`` / ``Objective.add_aux``) and add ``sum weight * value``.

Why not module state (``nnx.sow`` or a Variable on the layer): the trainer splits the model
into its Params only (``train.split_model`` refuses other state), and a layer called inside
``lax.scan`` / ``lax.map`` (samplers, evaluation) may not mutate a module built outside
it (NNX raises a trace-level error). A context-scoped tape has neither problem. The
values must be consumed at the trace level they were recorded at: the objectives call the
model directly in ``loss`` (never inside a nested ``scan``), which is the case here.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax.numpy as jnp

_TAPE: contextvars.ContextVar[AuxLosses | None] = contextvars.ContextVar("sandbox_aux_losses",
                                                                           default=None)


class AuxLosses:
    """What the layers recorded: a list of (value, weight)."""

    def __init__(self):
        self.entries: list[tuple[object, float]] = []

    def __bool__(self) -> bool:
        return bool(self.entries)

    def total(self):
        """sum weight * value: what the objective adds to its loss."""
        return sum((w * v for v, w in self.entries), jnp.float32(0.0))

    def raw(self):
        """sum value (unweighted), for metrics."""
        return sum((v for v, _ in self.entries), jnp.float32(0.0))


@contextlib.contextmanager
def collect():
    """Open a tape; layers' ``record`` calls inside the block land on it."""
    tape = AuxLosses()
    token = _TAPE.set(tape)
    try:
        yield tape
    finally:
        _TAPE.reset(token)


def record(value, weight: float) -> None:
    """Record an auxiliary loss (a scalar) with its weight; a no-op outside ``collect()``."""
    tape = _TAPE.get()
    if tape is not None:
        tape.entries.append((jnp.asarray(value, jnp.float32), float(weight)))
