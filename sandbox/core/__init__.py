"""Shared run plumbing: the build recipe, the step, devices, checkpoints, run folders, CLI."""
