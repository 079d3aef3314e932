"""Samplers: each a frozen dataclass selected by ``sampler=<name>`` (conf/sampler/)."""

from sandbox.samplers.ar import ARSampler
from sandbox.samplers.base import Sampler, compile_sampler
from sandbox.samplers.bd3lm import BD3LMSampler
from sandbox.samplers.mdm import Ancestral, FirstHitting, Threshold, TopKConfidence
from sandbox.samplers.remdm import ReMDM
from sandbox.samplers.speculative import SelfSpeculative

__all__ = ["ARSampler", "Ancestral", "BD3LMSampler", "FirstHitting", "ReMDM", "Sampler", "SelfSpeculative",
           "Threshold", "TopKConfidence", "compile_sampler"]
