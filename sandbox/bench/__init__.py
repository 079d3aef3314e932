"""Benchmarks: ``python -m sandbox.bench {train,gen}`` (console script ``sandbox-bench``).

Every model a benchmark times is built by the one recipe (``sandbox.core.build``) and the
training step timed is the trainer's own (``sandbox.core.step``); device questions go to
``sandbox.core.mesh``. Modules:

- ``cli``: the subcommand dispatcher; ``results``: the results folder, tables, flag lists.
- ``train`` (subcommand): ``train_step`` (one point; meshes round-robin), ``peak`` (the
  matmul peak MFU divides by), ``nnx_variants`` (the step written with ``nnx.jit``),
  ``checkpoint`` (save / restore time of the train state).
- ``gen`` (subcommand): ``gen_plan`` (presets, models, points), ``gen_time`` (timing one
  point against a bare forward), ``gen_quality`` (sample quality of the points); the
  summary figures are ``analysis.gen_summary`` (shared with the report).

Importing this package imports nothing heavy.
"""
