"""Regenerate the comparison report from run folders: ``python -m analysis.report``.

Usage::

    python -m analysis.report runs_glob='runs/demo/*' out=runs/demo title='Demo'

Writes ``<out>/report.md`` and its PNG figures next to it. It reads files only (run folders and
benchmark folders; :mod:`analysis.load`) and imports neither the training code nor JAX, so it
runs where only numpy, pandas, matplotlib and PyYAML are installed. It is idempotent: the same
runs give the same report. A missing input leaves a labelled gap in the report (one italic
line) instead of a crash, and a section that fails becomes a labelled gap while the others
still appear.

Sections are modules of :mod:`analysis.sections`, each ``section(ctx) -> str`` on one
:class:`analysis.context.Context`, listed in report order in :data:`SECTIONS`:
headline ratio, held-out bits per byte, learning curves, bits per byte vs tokens and FLOPs,
IsoFLOP and scaling fits, data repetition, sample quality, generation speed, code edits and
the run status.
"""

from __future__ import annotations

import sys
from pathlib import Path

from analysis.context import build_context
from analysis.errors import ReportError, exit_on_report_error
from analysis.labels import bound_sentence
from analysis.load import find_bench_gen, find_runs
from analysis.sections import (
    bpb,
    curves,
    edit_curves,
    edits,
    headline,
    learning,
    quality,
    repetition,
    runs,
    scaling,
    speed,
)

SECTIONS = (headline.section, bpb.section, learning.section, curves.section, scaling.section,
            repetition.section, quality.section, speed.section, edits.section,
            edit_curves.section, runs.section)


def build_report(runs_glob: str | list[str], out: str | Path, title: str = "Report") -> Path:
    out = Path(out)
    if not find_runs(runs_glob) and not find_bench_gen(runs_glob):
        raise ReportError(f"runs_glob={runs_glob!r}: no run folders (with metrics.jsonl) or benchmark "
                          "results match; train first or fix the pattern")
    out.mkdir(parents=True, exist_ok=True)
    ctx = build_context(runs_glob, out)
    parts = [f"# {title}", "", f"Runs: {len(ctx.runs)} (from `{runs_glob}`). Regenerate with "
             f"`python -m analysis.report runs_glob='{runs_glob}' out={out}`.", ""]
    if ctx.runs:
        parts += ["Held-out bits per byte: " + bound_sentence({o: b for o, b in ctx.bounds.items() if b}), ""]
    for section in SECTIONS:
        try:
            parts.append(section(ctx))
        except Exception as e:  # a broken section must not hide the others
            name = section.__module__.rsplit(".", 1)[-1]
            parts.append(f"## {name}\n\n_Could not be produced: {type(e).__name__}: {e}_\n")
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def _parse(argv: list[str]) -> dict:
    args = {"runs_glob": "runs/**", "out": "runs/report", "title": "Diffusion vs autoregressive: report"}
    for a in argv:
        if "=" not in a:
            raise ReportError(f"argument '{a}': expected key=value (keys: {', '.join(args)})")
        k, v = a.split("=", 1)
        if k not in args:
            raise ReportError(f"argument '{k}': unknown key (keys: {', '.join(args)})")
        args[k] = v
    return args


@exit_on_report_error
def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    path = build_report(args["runs_glob"], args["out"], args["title"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
