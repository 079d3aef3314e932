"""Worked example of ``docs/extending.md``: a squared-ReLU MLP (So et al. 2021, "Primer").

``relu(x W_in)^2 W_out``: two matrices instead of SwiGLU's three. It plugs into the block
through the model config (``conf/model/tiny_relu2.yaml``)::

    mlp:
      _target_: sandbox.models.relu2.ReLU2
      _partial_: true          # the backbone calls ReLU2(cfg, rngs=...) once per layer
      d_ff: 1024

and ``tests/test_zoo.py`` trains it under every objective like every other variant.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sandbox.models.transformer import param


class ReLU2(nnx.Module):
    """x[B, L, D] -> [B, L, D]. ``cfg`` is the backbone's shared settings dict."""

    def __init__(self, cfg: dict, *, rngs: nnx.Rngs, d_ff: int | None = None):
        d, f = cfg["d_model"], d_ff or 4 * cfg["d_model"]
        self.w_in = param(rngs, (d, f), ("embed", "mlp"), 1.0 / math.sqrt(d))
        self.w_out = param(rngs, (f, d), ("mlp", "embed"), cfg["out_std"])
        self.dtype = cfg["dtype"]  # compute dtype; parameters stay float32

    def __call__(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # 2-D matmuls run faster on XLA:CPU
        h = jnp.square(jax.nn.relu(x @ self.w_in[...].astype(self.dtype)))
        return (h @ self.w_out[...].astype(self.dtype)).reshape(shape)
