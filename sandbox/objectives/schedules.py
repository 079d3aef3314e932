"""Masking schedules for absorbing-state diffusion.

``alpha(t)`` is the probability that a token is still clean at time ``t`` in [0, 1]
(alpha(0) = 1, alpha(1) = 0) and ``weight(t) = -alpha'(t) / (1 - alpha(t))`` is the
continuous-time ELBO weight on masked positions (Sahoo et al. 2024, MDLM eq. 10;
Shi et al. 2024, MD4 eq. 5).

- linear:      alpha = 1 - t,                weight = 1 / t
- cosine:      alpha = 1 - cos(pi/2 (1 - t)), weight = pi/2 tan(pi/2 (1 - t))
- polynomial:  alpha = 1 - t**p,             weight = p / t

Each is a frozen dataclass so it is hashable and can sit inside a jitted objective. They
form the Hydra group ``objective/schedule`` (``conf/objective/schedule/*.yaml``), selected by
``_target_``: ``objective/schedule=cosine``. A new schedule is a class here (or anywhere
importable) plus one YAML file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp


@dataclass(frozen=True)
class Linear:
    name: str = "linear"

    def alpha(self, t):
        return 1.0 - t

    def weight(self, t):
        return 1.0 / t


@dataclass(frozen=True)
class Cosine:
    name: str = "cosine"

    def alpha(self, t):
        return 1.0 - jnp.cos(0.5 * math.pi * (1.0 - t))

    def weight(self, t):
        return 0.5 * math.pi * jnp.tan(0.5 * math.pi * (1.0 - t))


@dataclass(frozen=True)
class Polynomial:
    power: float = 2.0
    name: str = "polynomial"

    def alpha(self, t):
        return 1.0 - t**self.power

    def weight(self, t):
        return self.power / t
