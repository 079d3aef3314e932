"""Code edits during training: exact match on fixed val items (``val_edit_em`` of the eval
records, :func:`analysis.edits.edit_curves`) beside held-out bits per target byte, against
training tokens, one line per run.

Held-out bits per byte can fall for a long time before any edit comes out exactly right;
the right panel shows when one does (its axis stops a little above the highest exact match,
at least at 10%, so early learning is visible). A run's colour is its objective's (the report's
palette), its line style tells runs of one objective apart. Runs whose eval records carry no
``val_edit_em`` are left out; with none the section is one line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.context import Context
from analysis.edits import EM_FIELD, EM_KIND_PREFIX, curve_kinds, edit_curves
from analysis.formatting import MISSING, fixed, pct
from analysis.plotting import color_of, plt, save_figure
from analysis.sections import gap, images

HEADING = "## Code edits during training: exact match and held-out bits per byte"
FILE = "edits_em_curve.png"
STYLES = ("-", "--", ":", "-.")


def _label(g: pd.DataFrame) -> str:
    r = g.iloc[0]
    fmt = r.get("cfg.data.format")
    fmt = f" {fmt}" if isinstance(fmt, str) else ""
    return f"{r.get('objective') or '?'} / {r.get('model') or '?'}{fmt} ({r.get('run_name')})"


def _x(curves: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label): training tokens when every record has them, else the step."""
    if "tokens" in curves and curves["tokens"].notna().all():
        return "tokens", "training tokens"
    return "step", "step"


def plot_edit_curves(curves: pd.DataFrame, out: Path, colors: dict) -> str:
    xcol, xlabel = _x(curves)
    fig, (ax_bpb, ax_em) = plt.subplots(1, 2, figsize=(11, 4.2))
    seen: dict[str, int] = {}
    for _run, g in curves.groupby("run", sort=True):
        obj = str(g["objective"].iloc[0])
        st = {"color": color_of(colors, obj), "ls": STYLES[seen.get(obj, 0) % len(STYLES)], "marker": "o",
              "ms": 3, "label": _label(g)}
        seen[obj] = seen.get(obj, 0) + 1
        if "val_bpb" in g and g["val_bpb"].notna().any():
            b = g[g["val_bpb"].notna()]
            ax_bpb.plot(b[xcol], b["val_bpb"], **st)
        ax_em.plot(g[xcol], g[EM_FIELD].astype(float), **st)
    ax_bpb.set(xlabel=xlabel, ylabel="held-out bits per target byte", title="Held-out bits per byte")
    top = float(curves[EM_FIELD].astype(float).max())
    ax_em.set(xlabel=xlabel, ylabel="exact match", ylim=(-0.01, min(1.02, max(0.1, 1.15 * top))),
              title="Exact match on fixed val items (greedy)")
    for ax in (ax_bpb, ax_em):
        ax.grid(alpha=0.3)
    ax_em.legend(fontsize=6)
    return save_figure(fig, out, FILE)


def _kinds_cell(r, kinds: list[str]) -> str:
    cells = [f"{k} {pct(r.get(EM_KIND_PREFIX + k))}" for k in kinds if pd.notna(r.get(EM_KIND_PREFIX + k))]
    return ", ".join(cells) or MISSING


def section(ctx: Context) -> str:
    curves = edit_curves(ctx.metrics)
    if curves.empty:
        return gap(HEADING, "No run logged exact match during training (`val_edit_em` in its eval records: "
                            "train with `data=stdlib_edits` and `data.em_items` > 0).")
    file = plot_edit_curves(curves, ctx.out, ctx.colors)
    kinds = curve_kinds(curves)
    lines = [HEADING, "",
             "Every evaluation of each code-edit run (EMA weights): exact match of greedy decoding "
             "(the objective's `edit_sampler`, as `eval=edits`) on the same evenly spaced val items at "
             "every evaluation, beside held-out bits per target byte. " + ctx.bound_note, "",
             "| run | val items | last step | exact match | best (step) | held-out bpb | by kind (last) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for _run, g in curves.groupby("run", sort=True):
        last = g.iloc[-1]
        best = g.loc[g[EM_FIELD].astype(float).idxmax()]
        items = last.get("val_edit_items")
        lines.append(f"| {_label(g)} | {fixed(int(items)) if pd.notna(items) else MISSING} | "
                     f"{int(last['step'])} | {pct(last[EM_FIELD])} | {pct(best[EM_FIELD])} "
                     f"({int(best['step'])}) | {fixed(last.get('val_bpb'))} | {_kinds_cell(last, kinds)} |")
    return "\n".join([*lines, "", images([file]), ""]) + "\n"
