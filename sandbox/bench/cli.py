"""The ``python -m sandbox.bench <subcommand>`` dispatcher (console script ``sandbox-bench``).

Each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args)``; adding
one is one entry in :data:`SUBCOMMANDS`. The modules are imported by name, so this file
imports nothing heavy. Errors are one line and exit 2, whether argparse finds them (an
unknown flag, a non-integer) or the subcommand does (a :class:`UserError`), and come
before anything is measured or written.
"""

from __future__ import annotations

import argparse
import importlib

from sandbox.core.errors import exit_on_user_error

# name -> (module with add_arguments / run, one-line help)
SUBCOMMANDS = {
    "train": ("sandbox.bench.train", "training tokens/s, step time and MFU; NNX vs jax.jit"),
    "gen": ("sandbox.bench.gen", "generation latency, tokens/s and NFE per sampler; step vs bare forward"),
}
DESCRIPTION = "Benchmarks of the sandbox: training speed (train) and generation speed (gen)."


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2 (like UserError)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sandbox.bench", description=DESCRIPTION)
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
