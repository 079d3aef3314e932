"""The trainer's step computes the same numbers after every speed change.

Losses of three steps of the trainer's compiled step (AdamW, EMA; the chunked attention
kernel and the fused CPU kernel, ``model.attention=fused``) at a fixed seed and fixed random
batches, recorded with the step as it was before the training-speed work (``python -m
sandbox.bench train --profile`` and the levers listed in docs/design.md, "CPU
performance"). A lever that changes what is computed, not only how fast, breaks this test;
float32 reassociation stays far inside the tolerance."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import need_cpu_kernel

from sandbox.bench.train_step import build_point
from sandbox.core.step import make_train_step

SMALL = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
         "model.attn_chunk=16"]
# recorded at commit adc19fd (before the speed work), JAX 0.10.2 on CPU
REFERENCE = {
    "ar": [6.112802505493164, 6.149832725524902, 6.062997817993164],
    "mdlm": [4.818805694580078, 5.424842834472656, 6.13524866104126],
    "bd3lm": [5.800711631774902, 5.615525245666504, 6.057660102844238],
}


# bd3lm's block-diffusion mask is structured: model.attention=fused runs the chunked kernel for it
@pytest.mark.parametrize("objective,attention", [(o, a) for o in sorted(REFERENCE)
                                                 for a in ("chunked", "fused")
                                                 if not (o == "bd3lm" and a == "fused")])
def test_three_steps_reproduce_the_recorded_losses(objective, attention):
    if attention == "fused":
        need_cpu_kernel()
    extra = ["objective.block_size=16"] if objective == "bd3lm" else []
    extra.append(f"model.attention={attention}")
    b = build_point("tiny", objective, batch_size=4, seq_len=64, overrides=SMALL + extra)
    state = b.init_state()
    step = make_train_step(b.graphdef, b.objective, b.tx, 0.999, b.layout, state)
    rng = np.random.default_rng(0)
    losses = []
    for i in range(3):
        batch = rng.integers(0, 256, (4, 64)).astype(np.int32)
        state, m = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(0), i))
        losses.append(float(m["loss"]))
    assert losses == pytest.approx(REFERENCE[objective], rel=2e-5), losses
