"""The same train step written four ways: the sandbox's ``jax.jit`` step against idiomatic NNX.

``sandbox.core.step`` jits a pure function over the split NNX state (``nnx.split`` once,
``nnx.merge`` inside the trace) instead of the idiomatic ``nnx.jit`` + ``nnx.Optimizer``,
to avoid NNX's per-call graph traversal. :func:`bench_nnx_vs_jit` measures what that buys:

- ``jit_split``: the trainer's step itself (``make_train_step`` on the ``mesh=single``
  layout, state from ``Built.init_state()``);
- ``nnx_jit``: ``nnx.jit`` + ``nnx.Optimizer``, modules mutated in place (graph mode);
- ``nnx_cached``: the same with ``nnx.cached_partial`` (graph traversal done once);
- ``nnx_tree``: ``nnx.jit(graph=False)`` tree mode.

Every variant is built by the one recipe from the same config and seed (so all start
from the same weights) and owns its copy of the state (each donates it). The NNX
comparison runs on one device (``mesh=single`` whatever the overrides): the NNX variants
place nothing. Variants run round-robin, the order rotated every round, so load changes
on a shared machine hit all alike; the ratio to ``jit_split`` is the median of per-round
paired ratios. They must compute the same losses.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sandbox.bench.results import loadavg
from sandbox.bench.train_step import attention_of, build_point, check_shape, random_inputs, step_summary
from sandbox.core.errors import UserError
from sandbox.core.step import make_train_step

NNX_VARIANTS = {
    "jit_split": "jax.jit over nnx.split state (sandbox.core.step)",
    "nnx_jit": "nnx.jit + nnx.Optimizer (graph mode)",
    "nnx_cached": "nnx.jit + nnx.cached_partial",
    "nnx_tree": "nnx.jit(graph=False) tree mode",
}


def _nnx_step(objective, ema_decay: float, graph: bool):
    """The sandbox's train step (loss, grads, AdamW, EMA with warm-up, grad norm), written
    idiomatically in NNX: modules are mutated in place inside ``nnx.jit``."""

    def step(model, optimizer, ema, batch, key):
        def loss_fn(m):
            return objective.loss(m, batch, key)

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True, graph=graph)(model)
        optimizer.update(model, grads)
        n = optimizer.step[...].astype(jnp.float32)  # steps taken, after this update
        d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
        new = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, nnx.state(ema, nnx.Param),
                           nnx.state(model, nnx.Param))
        nnx.update(ema, new)
        return {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return nnx.jit(step, donate_argnums=(0, 1, 2), graph=graph)


def make_variant(name: str, b):
    """A callable (batch, key) -> metrics that advances its own copy of the train state, from
    a fresh ``Built`` ``b`` (the variant takes ownership of its model)."""
    if name not in NNX_VARIANTS:
        raise UserError(f"unknown NNX variant '{name}' (choose from {', '.join(NNX_VARIANTS)})")
    ema_decay = float(b.cfg.train.ema_decay)
    if name == "jit_split":
        box = {"state": b.init_state()}
        step = make_train_step(b.graphdef, b.objective, b.tx, ema_decay, b.layout, box["state"])

        def run(batch, key):
            box["state"], m = step(box["state"], batch, key)
            return m

        return run
    model, graph = b.model, name != "nnx_tree"
    optimizer = nnx.Optimizer(model, b.tx, wrt=nnx.Param, graph=graph)
    ema = nnx.clone(model)
    nnx.update(ema, jax.tree.map(jnp.copy, nnx.state(model)))  # own buffers: all three are donated
    step = _nnx_step(b.objective, ema_decay, graph)
    if name == "nnx_cached":
        with nnx.set_graph_mode(True), nnx.set_graph_updates(True):
            return nnx.cached_partial(step, model, optimizer, ema)
    return lambda batch, key: step(model, optimizer, ema, batch, key)


def bench_nnx_vs_jit(model_name: str = "tiny", objective_name: str = "ar", batch_size: int = 32,
                     seq_len: int = 256, steps: int = 5, *, variants=tuple(NNX_VARIANTS), overrides=(),
                     attention: str | None = None, warmup: int = 0, seed: int = 0) -> list[dict]:
    """Time the same train step written as each of ``variants`` (see ``NNX_VARIANTS``).

    Each variant's first call (compiling, then running one step) is timed apart; then
    ``warmup`` untimed and ``steps`` timed rounds run round-robin (same inputs).
    Per variant: first_call_s (trace + compile + one step), step_ms (median, blocked),
    dispatch_ms (median time until the call returns, before blocking: the host-side cost
    NNX adds), ratio = median over rounds of step time / ``jit_split``'s in the same
    round, ratio_min = min / min, and the loss after the last step (must agree across
    variants: they compute the same thing)."""
    check_shape(batch_size, seq_len, steps)
    variants = list(variants)
    if "jit_split" not in variants:
        variants.insert(0, "jit_split")
    for v in variants:
        if v not in NNX_VARIANTS:
            raise UserError(f"unknown NNX variant '{v}' (choose from {', '.join(NNX_VARIANTS)})")
    load0 = loadavg()
    point = dict(batch_size=batch_size, seq_len=seq_len, attention=attention, mesh="single",
                 overrides=overrides, seed=seed)
    runs, first = {}, {}
    for v in variants:
        b = build_point(model_name, objective_name, **point)
        runs[v] = make_variant(v, b)
    label = (str(b.cfg.model.name), b.objective.name, attention_of(b))
    inputs = random_inputs(1 + warmup + steps, batch_size, seq_len, b.tokenizer.n_text, seed)
    del b
    times, dispatch, last = {v: [] for v in variants}, {v: [] for v in variants}, {}
    for v, run in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(run(*inputs[0]))
        first[v] = time.perf_counter() - t0
    for i, (batch, key) in enumerate(inputs[1:]):
        for j in range(len(variants)):  # rotate who goes first: no variant always follows compile/GC
            v = variants[(i + j) % len(variants)]
            t0 = time.perf_counter()
            m = runs[v](batch, key)
            t1 = time.perf_counter()
            jax.block_until_ready(m)
            t2 = time.perf_counter()
            if i >= warmup:
                times[v].append(t2 - t0)
                dispatch[v].append(t1 - t0)
            last[v] = m
    rows = []
    base = times["jit_split"]
    for v in variants:
        rows.append({"kind": "nnx_vs_jit", "variant": v, "how": NNX_VARIANTS[v],
                     "model": label[0], "objective": label[1], "attention": label[2],
                     "batch": batch_size, "seq": seq_len,
                     "overrides": list(overrides), "first_call_s": first[v], **step_summary(times[v]),
                     "dispatch_ms": 1e3 * statistics.median(dispatch[v]),
                     "ratio": statistics.median(t / b for t, b in zip(times[v], base, strict=True)),
                     "ratio_min": min(times[v]) / min(base), "loss": float(last[v]["loss"]),
                     "load_before": load0, "load_after": loadavg()})
    return rows
