"""Benchmarks: ``python -m sandbox.bench <subcommand>`` (console script ``sandbox-bench``).

Subcommands:
- ``train``: training tokens/s, step time and MFU against a matmul peak measured in the
  same run, for models x objectives (x attention kernels), plus the same step written
  with ``nnx.jit`` vs ``jax.jit`` (``sandbox.bench_train``).
- ``gen``: generation latency, tokens/s, NFE and tokens per forward for every sampler
  over output length, batch, diffusion steps, threshold tau and semi-AR block size, each
  model call against a bare forward pass of the same shape (``sandbox.bench_gen``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args)``; adding one is one entry in ``SUBCOMMANDS``. Results go to a
self-describing folder under ``runs/bench/`` (``results.jsonl`` plus ``env.json`` /
``git.json``); a bad flag prints one line and exits 2 before anything is measured or
written.
"""

from __future__ import annotations

import argparse
import importlib

from sandbox.errors import exit_on_user_error

# name -> (module with add_arguments / run, one-line help)
SUBCOMMANDS = {
    "train": ("sandbox.bench_train", "training tokens/s, step time and MFU; NNX vs jax.jit"),
    "gen": ("sandbox.bench_gen", "generation latency, tokens/s and NFE per sampler; step vs bare forward"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2 (like UserError)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sandbox.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}",
                           parser_class=_Parser)
    for name, (module, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_module=module)
    return p


@exit_on_user_error
def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    main()
