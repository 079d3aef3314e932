"""Training objectives: each a frozen dataclass selected by ``objective=<name>``."""

from sandbox.objectives.ar import AR
from sandbox.objectives.base import Objective, bits_per_byte
from sandbox.objectives.mdlm import MDLM

__all__ = ["AR", "MDLM", "Objective", "bits_per_byte"]
