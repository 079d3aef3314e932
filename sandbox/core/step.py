"""The compiled train step and held-out evaluation, on a device layout.

The step is a pure ``jax.jit`` function over the split NNX state (``nnx.split`` once,
``nnx.merge`` inside the trace), which avoids NNX's per-call graph traversal
(``python -m sandbox.bench train`` measures it against ``nnx.jit``). The train state is a
plain pytree ``{params, ema, opt, step}``.

Both functions always run on a ``sandbox.core.mesh.Layout`` (``mesh=single`` is a
one-device layout), so the benchmark, the tests and the trainer compile the same step:
state shardings in and out, the batch split over the data-parallel devices, key and
metrics replicated; the parameters are gathered once per step and the gradients
constrained back to the parameters' layout (FSDP: all-gather, then reduce-scatter).

Evaluation reports held-out bits per byte of the EMA weights: exact for AR, an upper
bound (negative ELBO) with its Monte-Carlo standard error for diffusion.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
from flax import nnx

from sandbox.core.mesh import Layout

LN2 = math.log(2.0)


def objective_args(batch) -> tuple:
    """(tokens, {field: array}) of a batch: an array, or a dict of "tokens" and the fields the
    batch source declares (``cond``, ...), passed to the objective as keyword arguments."""
    if isinstance(batch, dict):
        return batch["tokens"], {k: v for k, v in batch.items() if k != "tokens"}
    return batch, {}


def make_train_step(graphdef, objective, tx, ema_decay: float, layout: Layout, state):
    """state, batch[B, L], key -> (state, metrics), jitted on ``layout`` with the state donated.

    ``state`` is an example train state (its shardings fix the compiled step's)."""
    p_shard = layout.shardings(state["params"])

    def step_fn(state, batch, key):
        def loss_fn(p):
            p = jax.lax.with_sharding_constraint(p, layout.replicated)
            tokens, kw = objective_args(batch)
            return objective.loss(nnx.merge(graphdef, p), tokens, key, **kw)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grads = jax.lax.with_sharding_constraint(grads, p_shard)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
        step = state["step"] + 1
        # EMA with warm-up (decay grows like (1+n)/(10+n)) so short runs are not all init.
        d = jax.numpy.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"], params)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
        return {"params": params, "ema": ema, "opt": opt, "step": step}, metrics

    s_shard = layout.shardings(state)
    return jax.jit(step_fn, donate_argnums=0,
                   in_shardings=(s_shard, layout.batch_sharding(), layout.replicated),
                   out_shardings=(s_shard, layout.replicated))


def make_eval_fn(graphdef, objective, draws: int, layout: Layout):
    """params, batch[B, L], key -> per-sequence nats/token draws [K, B], replicated."""

    def fn(p, batch, key):
        tokens, kw = objective_args(batch)
        return objective.nll(nnx.merge(graphdef, p), tokens, key, draws, **kw)

    return jax.jit(fn, out_shardings=layout.replicated)


def evaluate(eval_fn, params, batches, tokens_per_byte, *, key, exact: bool, layout: Layout) -> dict:
    """Held-out bits per byte. For a bound with K draws per sequence, the standard error is
    the Monte-Carlo error of the estimate given the data: sqrt(sum_b var_k(v[k,b]) / K) / N.
    Every process reads the same windows (``layout.full_batch`` splits them over the devices)."""
    draws = []
    for i, batch in enumerate(batches):
        batch = jax.tree.map(layout.full_batch, batch)
        k = layout.replicate(jax.random.fold_in(key, i))
        draws.append(np.asarray(eval_fn(params, batch, k)))
    v = np.concatenate(draws, axis=1).astype(np.float64)  # [K, N]
    k, n = v.shape
    nats = float(v.mean())
    scale = tokens_per_byte / LN2
    out = {"val_nats_per_token": nats, "val_bpb": nats * scale, "val_sequences": n,
           "bound": "exact" if exact else "upper"}
    if not exact:
        var = v.var(axis=0, ddof=1).sum() / k if k > 1 else float("nan")
        out["val_bpb_stderr"] = float(math.sqrt(var) / n * scale)
        out["val_draws"] = k
    return out
