"""What every report section reads: one :class:`Context`, built once per report.

Sections are functions ``section(ctx) -> str`` (Markdown); they share the inputs below instead
of reloading them, and the objective order and colours are computed here once from the tidy
table, so every figure of a report draws an objective in the same colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.labels import bound_note, bounds_of, objective_order, reference_objective
from analysis.load import find_runs, load_metrics
from analysis.plotting import objective_colors
from analysis.table import load_runs


@dataclass
class Context:
    runs_glob: str | list[str]
    runs: list[Path]
    metrics: pd.DataFrame    # analysis.load.load_metrics: one row per record of every run
    table: pd.DataFrame      # analysis.table.load_runs: the tidy table
    out: Path                # where the report and its figures go
    bounds: dict[str, str | None] = field(default_factory=dict)  # objective label -> exact | upper
    order: list[str] = field(default_factory=list)               # objective labels, report order
    colors: dict[str, tuple] = field(default_factory=dict)       # objective label -> colour

    @property
    def reference(self) -> str | None:
        """The exact-likelihood objective others are compared with (first in the order)."""
        return reference_objective(self.bounds)

    @property
    def bound_note(self) -> str:
        return bound_note({o: b for o, b in self.bounds.items() if b})


def build_context(runs_glob: str | list[str], out: Path) -> Context:
    runs = find_runs(runs_glob)
    table = load_runs(runs)
    bounds = bounds_of(table)
    order = objective_order(bounds)
    return Context(runs_glob=runs_glob, runs=runs, metrics=load_metrics(runs), table=table, out=Path(out),
                   bounds=bounds, order=order, colors=objective_colors(order))
