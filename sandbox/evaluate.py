"""Evaluate a trained run: ``python -m sandbox.evaluate eval=<kind> run_dir=<run> [...]``.

The evaluation is chosen by the ``eval/`` config group (``conf/evaluate.yaml``). Each
option sets ``eval._target_`` to the function that runs it; the entry point instantiates
that node as a partial and calls it with the whole config. Adding an evaluation is one
function plus one ``conf/eval/<kind>.yaml``, with no edit here.

- ``eval=quality`` (``sandbox.eval.quality.quality``): sample statistics (gen-perplexity
  under a judge, entropy, distinct-n, parse rate) next to held-out text's.
- ``eval=edits`` (``sandbox.tasks.edits.evaluate.edits``): code-edit exact match and
  latency per edit of a run trained with ``data=stdlib_edits``.
"""

from __future__ import annotations

from sandbox.core.cli import instantiate, sampling_entry
from sandbox.core.errors import UserError


def task(cfg):
    if cfg.get("eval") is None:
        raise UserError("eval: pick an evaluation (eval=quality; options live in conf/eval/)")
    run_eval = instantiate(cfg.eval, "eval", _partial_=True)
    return run_eval(cfg)


def main() -> None:
    sampling_entry(task, config_name="evaluate")


if __name__ == "__main__":
    main()
