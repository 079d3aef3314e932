"""Held-out bits per byte against training tokens and FLOPs: one panel per objective (report
order), one colour per model size, every evaluation of every run as a thin line and the last
one as a dot (finished run) or a cross (unfinished run).

Only runs whose bound is recorded are drawn: a panel title says whether its figures are exact
or upper bounds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.context import Context
from analysis.labels import bound_suffix
from analysis.plotting import curve_axes, plt, save_figure
from analysis.sections import gap, images

HEADING = "## Held-out bits per byte vs tokens and FLOPs, per objective and size"


def plot_bpb_curves(table: pd.DataFrame, order: list[str], bounds: dict, out: Path) -> list[str]:
    """bpb_vs_tokens.png and bpb_vs_flops.png; [] when no run with a recorded bound has an
    evaluation."""
    ev = table[table["known_objective"] & table["val_bpb"].notna()]
    objs = [o for o in order if o in set(ev["objective"])]
    if not objs:
        return []
    sizes = sorted(set(zip(ev["params"].fillna(-1), ev["size"])))
    cmap = plt.get_cmap("viridis")
    color = {s: cmap(i / max(len(sizes) - 1, 1) * 0.9) for i, (_, s) in enumerate(sizes)}
    files = []
    for xcol, xlabel, name in (("tokens", "training tokens", "bpb_vs_tokens.png"),
                               ("flops", "training FLOPs", "bpb_vs_flops.png")):
        fig, axes = curve_axes(len(objs))
        for ax, obj in zip(axes, objs):
            e = ev[ev["objective"] == obj]
            for _run, g in e.groupby("run", sort=True):
                g = g.sort_values("step")
                ax.plot(g[xcol], g["val_bpb"], color=color[g["size"].iloc[0]], alpha=0.35, lw=1)
                last = g.iloc[-1]
                ax.scatter([last[xcol]], [last["val_bpb"]], color=color[last["size"]], s=18,
                           marker="o" if last["finished"] else "x", zorder=3)
            ax.set(xscale="log", xlabel=xlabel, title=obj + bound_suffix(bounds.get(obj)))
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel("held-out bits per byte")
        for _, s in sizes:
            axes[-1].plot([], [], color=color[s], label=s)
        axes[-1].scatter([], [], color="grey", marker="x", label="unfinished run")
        axes[-1].legend(fontsize=7, title="size", title_fontsize=7)
        files.append(save_figure(fig, out, name))
    return files


def section(ctx: Context) -> str:
    files = plot_bpb_curves(ctx.table, ctx.order, ctx.bounds, ctx.out) if not ctx.table.empty else []
    if not files:
        return gap(HEADING, "No evaluations of a run with a recorded bound (exact or upper) in these runs.")
    return (f"{HEADING}\n\nEvery evaluation of every run (EMA weights, validation split); dots: the last "
            "evaluation of a finished run, crosses: of an unfinished one. " + ctx.bound_note + "\n\n"
            + images(files) + "\n")
