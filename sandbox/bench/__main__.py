"""``python -m sandbox.bench <subcommand>``: see :mod:`sandbox.bench.cli`."""

from sandbox.bench.cli import main

if __name__ == "__main__":
    main()
