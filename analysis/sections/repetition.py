"""Data repetition: held-out bits per byte against epochs at fixed unique training data.

Runs that record their unique training tokens get ``epochs = tokens / unique tokens``; runs of
the same size on the same unique data that differ in epochs, at least one of them past one
epoch, form a group drawn as bits per byte against epochs, one line per objective, with a
table per group and a verdict against the exact-likelihood reference, the same runs against
training FLOPs (BD3LM spends more per token), and the **crossover epoch count** per diffusion
objective and unique-data size: where its bound first drops below the reference's exact figure
(:func:`analysis.fits.crossover`: linear in log2 epochs between the measured points, with the
interval from the seed-mean difference -/+ 1.96 s.e.), or "none in range". Without recorded unique
tokens, runs given ``train.steps`` on the same data and model are drawn against tokens seen
instead (labelled so); without those either, one line says what is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.context import Context
from analysis.fits import crossover, final_points, grouped, objectives_in
from analysis.formatting import fixed, join_labels, sig
from analysis.labels import bound_suffix, bounds_of, reference_objective
from analysis.plotting import color_of, curve_axes, plain_log_ticks, save_figure
from analysis.sections import gap

HEADING = "## Data repetition: bits per byte vs epochs at fixed unique data"
REP_KEYS = ["setting", "unique_tokens", "params"]


def plot_repetition(pts: pd.DataFrame, xcol: str, xlabel: str, group_cols: list[str], out: Path, name: str,
                    colors: dict) -> tuple[str, list[tuple]]:
    """One panel per group (fixed unique data and size): bits/byte vs ``xcol`` per objective."""
    groups = []
    for key, g in pts.groupby(group_cols, sort=True, dropna=False):
        if g[xcol].round(6).nunique() >= 2:
            groups.append((key, g))
    fig, axes = curve_axes(max(len(groups), 1))
    for ax, (_key, g) in zip(axes, groups):
        for obj in objectives_in(g):
            m = grouped(g[g["objective"] == obj].assign(x=g[xcol].round(6)), keys=("objective", "x"))
            m = m.sort_values("x")
            suffix = bound_suffix("upper") if m["bound"].iloc[0] == "upper" else ""
            ax.errorbar(m["x"], m["bpb_mean"], yerr=m["bpb_se"], marker="o", ms=4, capsize=2,
                        color=color_of(colors, obj), label=obj + suffix)
        if xcol == "flops":  # 1e11-style ticks read better than 2^k for compute
            ax.set_xscale("log")
        else:
            ax.set_xscale("log", base=2)
            plain_log_ticks(ax, "x")
        first = g.iloc[0]
        title = first["size"]
        if "unique_tokens" in group_cols:
            title += f", {first['unique_tokens']:,.0f} unique tokens"
        ax.set(xlabel=xlabel, title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out bits per byte")
    return save_figure(fig, out, name), groups


def _group_table(g: pd.DataFrame) -> list[str]:
    first = g.iloc[0]
    objs = objectives_in(g)
    ref = reference_objective(bounds_of(g))
    lines = [f"{first['size']}, {first['unique_tokens']:,.0f} unique tokens ({first['setting']}):", "",
             "| epochs | " + " | ".join(objs) + " |", "|---:|" + "---:|" * len(objs)]
    m = grouped(g.assign(x=g["epochs"].round(6)), keys=("objective", "x"))
    over = []
    for x in sorted(m["x"].unique()):
        mx = m[m["x"] == x].set_index("objective")
        lines.append(f"| {sig(x)} | " + " | ".join(fixed(mx.loc[o, "bpb_mean"]) if o in mx.index else "–"
                                                   for o in objs) + " |")
        if ref in mx.index:
            better = [o for o in objs if o in mx.index and o != ref
                      and mx.loc[o, "bpb_mean"] < mx.loc[ref, "bpb_mean"]]
            if better:
                over.append(f"{sig(x)} epochs ({join_labels(better)})")
    if ref is None or len(objs) < 2:
        verdict = "_No exact-likelihood reference, or no other objective, in this group to compare._"
    elif over:
        verdict = f"Below {ref}'s exact figure at " + "; ".join(over) + "."
    else:
        verdict = f"{ref} stays ahead of every other objective at every epoch count measured."
    return lines + ["", verdict, ""]


def crossovers(groups: list[tuple]) -> pd.DataFrame:
    """One row per (group, objective other than the exact reference): the crossover epochs of
    :func:`analysis.fits.crossover` with ``size``, ``unique_tokens``, ``reference``."""
    rows = []
    for _key, g in groups:
        ref = reference_objective(bounds_of(g))
        if ref is None:
            continue
        m = grouped(g.assign(x=g["epochs"].round(6)), keys=("objective", "x"))
        r = m[m["objective"] == ref].set_index("x")
        for obj in objectives_in(g):
            if obj == ref:
                continue
            o = m[m["objective"] == obj].set_index("x")
            xs = sorted(set(o.index) & set(r.index))
            if len(xs) < 2:
                continue
            delta = [o.loc[x, "bpb_mean"] - r.loc[x, "bpb_mean"] for x in xs]
            se = [float(np.hypot(o.loc[x, "bpb_se"], r.loc[x, "bpb_se"])) for x in xs]
            c = crossover(xs, delta, se)
            rows.append({"size": g["size"].iloc[0], "unique_tokens": float(g["unique_tokens"].iloc[0]),
                         "objective": obj, "reference": ref, "first": xs[0], "last": xs[-1],
                         "n_seeds": int(o["n_seeds"].min()), **c})
    return pd.DataFrame(rows)


def _crossover_text(r) -> str:
    early = [x for x in r.get("ahead_at") or [] if r["x"] is None or x < r["x"]]
    note = ""
    if early and r["status"] != "from_start":
        note = f"; also ahead at {', '.join(sig(x) for x in early)}"
    if r["status"] == "never":
        return f"none in {sig(r['first'])}–{sig(r['last'])}{note}"
    if r["status"] == "from_start":
        return f"≤ {sig(r['first'])} (ahead at every point)"
    lo = f"≤ {sig(r['first'])}" if r["lo"] is None else sig(r["lo"])
    hi = f"> {sig(r['last'])}" if r["hi"] is None else sig(r["hi"])
    return f"{sig(r['x'])} [{lo}, {hi}]{note}"


def crossover_table(cross: pd.DataFrame) -> list[str]:
    """Rows: unique-data size (and model size); columns: objectives; cells: crossover epochs."""
    if cross.empty:
        return []
    objs = list(dict.fromkeys(cross["objective"]))
    lines = ["**Crossover**: the epoch count from which each objective's held-out figure stays "
             f"below {join_labels(sorted(set(cross['reference'])))}'s (interpolated in log2 epochs "
             "between measured points; brackets: the same for the seed-mean difference -/+ 1.96 s.e.):",
             "", "| size | unique tokens | " + " | ".join(objs) + " |", "|---|---:|" + "---:|" * len(objs)]
    for (size, unique), g in cross.groupby(["size", "unique_tokens"], sort=True):
        cells = {r["objective"]: _crossover_text(r) for _, r in g.iterrows()}
        lines.append(f"| {size} | {unique:,.0f} | " + " | ".join(cells.get(o, "–") for o in objs) + " |")
    return lines + [""]


def section(ctx: Context) -> str:
    pts = final_points(ctx.table)
    if pts.empty:
        return gap(HEADING, "No finished runs of a known objective: nothing to plot.")
    rep = pts[pts["epochs"].notna() & pts["params"].notna()]
    if not rep.empty:
        by = rep.groupby(REP_KEYS)["epochs"]
        rep = rep[(by.transform(lambda e: e.round(6).nunique()) >= 2) & (by.transform("max") > 1)]
    if not rep.empty:
        name, groups = plot_repetition(rep, "epochs", "epochs (tokens seen / unique training tokens)",
                                       REP_KEYS, ctx.out, "repetition.png", ctx.colors)
        lines = [HEADING, "",
                 "Each point: the last evaluation of finished runs that saw the same unique training data "
                 "for a different number of epochs (seed mean ± s.e.). " + ctx.bound_note + " So where an "
                 "upper bound lies below an exact figure, that model is better for certain; where it lies "
                 "above, the gap may be smaller than drawn.", "", f"![{name}]({name})", ""]
        cname, _ = plot_repetition(rep, "flops", "training FLOPs", REP_KEYS, ctx.out,
                                   "repetition_compute.png", ctx.colors)
        lines += ["The same points against training compute (FLOPs; a block-diffusion token costs more):", "",
                  f"![{cname}]({cname})", ""]
        lines += crossover_table(crossovers(groups))
        for _key, g in groups:
            lines += _group_table(g)
        return "\n".join(lines) + "\n"
    steps_runs = pts[pts["budget"].isna() & pts["params"].notna()]
    if not steps_runs.empty:
        steps_runs = steps_runs[steps_runs.groupby(["setting", "params"])["tokens"].transform(
            lambda t: t.round(6).nunique()) >= 2]
    if steps_runs.empty:
        return gap(HEADING, "No repetition runs: no runs given `train.steps` on the same data and model for "
                            "different lengths (e.g. `experiment=repetition_cpu`).")
    name, groups = plot_repetition(steps_runs, "tokens", "training tokens seen (epochs unknown)",
                                   ["setting", "params"], ctx.out, "repetition_tokens.png", ctx.colors)
    keys = "; ".join(f"{g.iloc[0]['size']}: {g.iloc[0]['setting']}" for _, g in groups)
    return (f"{HEADING}\n\n_Epochs unknown: no run records its number of unique training tokens (the meta "
            "line of `metrics.jsonl` would carry `unique_tokens`, or the config `train.unique_tokens` / "
            "`data.unique_tokens`), so bits/byte cannot be drawn against epochs._\n\nInstead: runs given "
            "`train.steps` on the same data and model, against tokens seen (epochs = tokens / unique "
            f"training tokens, a constant per panel). Panels: {keys}. {ctx.bound_note}\n\n"
            f"![{name}]({name})\n")
