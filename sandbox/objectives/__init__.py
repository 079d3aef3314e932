"""Training objectives: each a frozen dataclass selected by ``objective=<name>``."""

from sandbox.objectives.ar import AR
from sandbox.objectives.base import Objective, bits_per_byte
from sandbox.objectives.bd3lm import BD3LM
from sandbox.objectives.edit_mdlm import EditMDLM
from sandbox.objectives.mdlm import MDLM

__all__ = ["AR", "BD3LM", "EditMDLM", "MDLM", "Objective", "bits_per_byte"]
