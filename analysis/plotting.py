"""Matplotlib helpers shared by every figure of the report.

- Figures are drawn with the non-interactive Agg backend (no display needed) and written as
  PNG by :func:`save_figure`, the one place that sets their resolution and closes them.
- :func:`objective_colors` gives each objective one colour from one palette, by the report's
  objective order (:func:`analysis.labels.objective_order`). The report computes it once from
  the tidy table, so an objective has the same colour in every figure of a report.
- Log axes print plain numbers (:func:`plain_log_ticks`); :func:`finish_axes` adds the grid
  and a legend when something is labelled.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

DPI = 110
PALETTE = "tab10"
UNKNOWN_COLOR = (0.5, 0.5, 0.5, 1.0)  # an objective outside the palette's assignment


def objective_colors(order: list[str]) -> dict[str, tuple]:
    """label -> colour, by position in ``order`` (the palette repeats after ten)."""
    cmap = plt.get_cmap(PALETTE)
    return {label: cmap(i % cmap.N) for i, label in enumerate(order)}


def color_of(colors: dict, label) -> tuple:
    return colors.get(str(label), UNKNOWN_COLOR)


def label_colors(labels) -> dict[str, tuple]:
    """One palette colour per distinct label, in sorted order (e.g. samplers of one benchmark)."""
    return objective_colors(sorted({str(x) for x in labels}))


def save_figure(fig, out: Path, name: str) -> str:
    """Lay out, write ``out/name`` as PNG, close; returns ``name`` (the report links it)."""
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=DPI)
    plt.close(fig)
    return name


def plain_log_ticks(ax, which: str = "xy") -> None:
    """Plain numbers (1, 2, 4 / 3, 4) instead of powers on the log axes of ``ax``."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for w in which:
        axis = ax.xaxis if w == "x" else ax.yaxis
        if axis.get_scale() == "log":
            axis.set_major_formatter(plain)
            lo, hi = sorted(axis.get_view_interval())
            # within one decade no major tick may be in view: label the minor ones instead
            axis.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else NullFormatter())


def finish_axes(ax, fontsize: int = 7) -> None:
    """Grid, no minor tick labels on log axes, and a legend when anything is labelled."""
    ax.grid(alpha=0.3, which="both")
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_minor_formatter(NullFormatter())
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def curve_axes(n: int, sharey: bool = True):
    """One row of ``n`` panels (4.6 x 4 inches each)."""
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4), squeeze=False, sharey=sharey)
    return fig, axes[0]
