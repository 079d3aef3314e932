"""Learning curves: held-out bits per byte against training FLOPs (with ±2 s.e. bands where
the figure is an estimated bound) and train loss against step, one line per run.

One line per run, not per objective, so the curves use matplotlib's colour cycle; a panel
with no records is left out, and with no records at all the section is one line.
"""

from __future__ import annotations

from analysis.context import Context
from analysis.plotting import plt, save_figure
from analysis.sections import gap

HEADING = "## Learning curves"
FILE = "learning_curves.png"


def _label(row) -> str:
    return f"{row.get('objective') or '?'} / {row.get('model') or '?'} ({row.get('run_name')})"


def section(ctx: Context) -> str:
    df = ctx.metrics
    if df.empty or "kind" not in df:
        return gap(HEADING, "No metrics to plot.")
    ev = df[(df["kind"] == "eval")]
    ev = ev[ev["val_bpb"].notna()] if "val_bpb" in ev else ev.iloc[0:0]
    tr = df[df["kind"] == "train"]
    tr = tr[tr["train_loss"].notna()] if "train_loss" in tr else tr.iloc[0:0]
    panels = [p for p, d in (("eval", ev), ("train", tr)) if not d.empty]
    if not panels:
        return gap(HEADING, "No train or eval records to plot.")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    ax_of = dict(zip(panels, axes[0]))
    if "eval" in ax_of:
        ax = ax_of["eval"]
        for _run, g in ev.groupby("run"):
            g = g.sort_values("flops")
            (line,) = ax.plot(g["flops"], g["val_bpb"], marker="o", ms=3, label=_label(g.iloc[0]))
            if "val_bpb_stderr" in g and g["val_bpb_stderr"].notna().any():
                ax.fill_between(g["flops"], g["val_bpb"] - 2 * g["val_bpb_stderr"],
                                g["val_bpb"] + 2 * g["val_bpb_stderr"], alpha=0.2, color=line.get_color())
        ax.set(xlabel="training FLOPs", ylabel="held-out bits per byte",
               title="Held-out bits per byte vs compute")
    if "train" in ax_of:
        ax = ax_of["train"]
        for _run, g in tr.groupby("run"):
            g = g.sort_values("step")
            ax.plot(g["step"], g["train_loss"], marker="o" if len(g) == 1 else None, label=_label(g.iloc[0]))
        ax.set(xlabel="step", ylabel="train loss (nats/token)", title="Training loss")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, ctx.out, FILE)
    text = f"{HEADING}\n\n![learning curves]({FILE})\n"
    if "eval" in ax_of:
        text += "\nShaded bands: ±2 standard errors of the estimated bounds.\n"
    return text
