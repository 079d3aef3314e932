"""Backbones: each an nnx.Module selected by ``model=<name>``."""
