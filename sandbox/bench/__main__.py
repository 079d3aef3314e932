"""``python -m sandbox.bench <subcommand>`` (console script ``sandbox-bench``): see
:mod:`sandbox.bench.cli`. ``train`` keeps the memory each step frees for the next, as the
trainer does (``sandbox.core.host_memory``): set here, before the dispatcher imports NumPy
and JAX."""

import sys

from sandbox.core import host_memory


def main(argv: list[str] | None = None):
    if (sys.argv[1:] if argv is None else argv)[:1] == ["train"]:
        host_memory.keep_freed_memory()
    from sandbox.bench.cli import main as dispatch

    return dispatch(argv)


if __name__ == "__main__":
    main()
