"""IsoFLOP curves and power-law scaling fits, one group of figures and tables per setting.

IsoFLOP: held-out bits per byte against model size at each training-FLOP budget, the
compute-optimal size starred. Scaling: those optima against compute with the fitted power law
(:mod:`analysis.fits` documents the fit and why it has two parameters). The scaling figure is
drawn only when some objective has a fit (finished runs at two or more budgets); otherwise the
section says so in one line rather than drawing points without a curve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.context import Context
from analysis.fits import (
    budget_points,
    compute_multiplier,
    fit_all,
    fit_optimal_size,
    frontier,
    grouped,
    mark_interior,
    objectives_in,
    predict,
    settings_of,
)
from analysis.formatting import fixed, join_labels, sig
from analysis.labels import bound_suffix
from analysis.plotting import color_of, curve_axes, plain_log_ticks, plt, save_figure
from analysis.sections import gap, images

HEADING = "## IsoFLOP curves and scaling fits"


def _text(ctx: Context) -> str:
    return ("IsoFLOP: held-out bits per byte against model size at each training-FLOP budget (seed "
            "mean ± s.e.); stars mark the compute-optimal size among those trained. Scaling: those "
            "optima against compute, with the power law `L = a * C^(-b)` (L in bits per byte, C in "
            "training FLOPs) fitted by least squares of ln L on ln C over every seed's point at the "
            "optimal sizes; 95% intervals from the fit's covariance. A 2-parameter law is used because "
            "3-4 budgets cannot identify an irreducible-loss term; read the exponent as the local slope "
            "over the budgets measured. " + ctx.bound_note)


def plot_isoflop(groups: pd.DataFrame, front: pd.DataFrame, out: Path, name: str, setting: str,
                 bounds: dict) -> str:
    objs = objectives_in(groups)
    budgets = sorted(groups["cgroup"].unique())
    cmap = plt.get_cmap("plasma")
    fig, axes = curve_axes(len(objs))
    for ax, obj in zip(axes, objs):
        g = groups[groups["objective"] == obj]
        for i, c in enumerate(budgets):
            gc = g[g["cgroup"] == c].sort_values("params")
            if gc.empty:
                continue
            col = cmap(i / max(len(budgets) - 1, 1) * 0.85)
            ax.errorbar(gc["params"], gc["bpb_mean"], yerr=gc["bpb_se"], color=col, marker="o", ms=4,
                        capsize=2, label=f"C = {c:.2g}")
            f = front[(front["objective"] == obj) & (front["cgroup"] == c)]
            ax.scatter(f["params"], f["bpb_mean"], marker="*", s=140, color=col, edgecolor="k", zorder=4)
        suffix = bound_suffix(bounds.get(obj)) if bounds.get(obj) == "upper" else ""
        ax.set(xscale="log", xlabel="non-embedding parameters", title=f"{obj}: IsoFLOP curves{suffix}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out bits per byte (seed mean)")
    if setting:
        fig.suptitle(setting, fontsize=9)
    return save_figure(fig, out, name)


def plot_scaling(front: pd.DataFrame, fits: dict, out: Path, name: str, setting: str, bounds: dict,
                 colors: dict) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for obj in objectives_in(front):
        f = front[front["objective"] == obj].sort_values("flops")
        col = color_of(colors, obj)
        ax.errorbar(f["flops"], f["bpb_mean"], yerr=f["bpb_se"], color=col, marker="o", ls="none", capsize=2)
        fit = fits.get(obj)
        if fit is not None:
            xs = np.geomspace(f["flops"].min(), f["flops"].max(), 50)
            bound = bound_suffix("upper") if bounds.get(obj) == "upper" else ""
            ax.plot(xs, predict(fit, xs), color=col, label=f"{obj}: {fit['a']:.3g}·C^-{fit['b']:.3f}{bound}")
        else:
            ax.plot([], [], color=col, marker="o", ls="none", label=f"{obj} (no fit: one budget)")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C",
           ylabel="held-out bits per byte, compute-optimal size",
           title="Scaling: frontier of each objective and fitted power law"
           + (f"\n{setting}" if setting else ""))
    plain_log_ticks(ax, "y")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save_figure(fig, out, name)


def _one_setting(ctx: Context, pts: pd.DataFrame, suffix: str, setting: str) -> list[str]:
    groups = grouped(pts)
    front = frontier(groups)
    fits = fit_all(pts, front)
    files = [plot_isoflop(groups, front, ctx.out, f"isoflop{suffix}.png", setting, ctx.bounds)]
    if fits:
        files.append(plot_scaling(front, fits, ctx.out, f"scaling{suffix}.png", setting, ctx.bounds,
                                  ctx.colors))
    lines = [images(files), ""]
    if fits:
        lines += ["| objective | budgets | points | a [95% CI] | b [95% CI] | rms residual (ln) | interval |",
                  "|---|---:|---:|---|---|---:|---|"]
        for obj in [o for o in objectives_in(front) if o in fits]:
            f = fits[obj]
            nb = int((front["objective"] == obj).sum())
            lines.append(f"| {obj} | {nb} | {f['n']} | {sig(f['a'], 4)} [{sig(f['a_lo'], 3)}, "
                         f"{sig(f['a_hi'], 3)}] | {fixed(f['b'], 4)} [{fixed(f['b_lo'], 4)}, "
                         f"{fixed(f['b_hi'], 4)}] | {fixed(f['rmse_log'], 4)} | {f['ci']} |")
        lines.append("")
    missing = [o for o in objectives_in(front) if o not in fits]
    if missing:
        lines += [f"_No power-law fit for {join_labels(missing)}: a fit needs finished runs at two or more "
                  "budgets._", ""]
    front = mark_interior(groups, front)
    lines += ["Compute-optimal points (`edge`: the optimum is the smallest or largest size trained at that "
              "budget, so the true optimum may lie outside the grid):", "",
              "| objective | budget (FLOPs) | size | FLOPs | tokens | seeds | bits/byte ± s.e. | in grid |",
              "|---|---:|---|---:|---:|---:|---|---|"]
    for obj in objectives_in(front):
        for _, r in front[front["objective"] == obj].sort_values("cgroup").iterrows():
            where = ("interior" if r["interior"]
                     else f"edge ({r['n_sizes']} size{'s' if r['n_sizes'] != 1 else ''})")
            lines.append(f"| {r['objective']} | {sig(r['cgroup'])} | {r['size']} | {sig(r['flops'])} | "
                         f"{sig(r['tokens'])} | {r['n_seeds']} | "
                         f"{fixed(r['bpb_mean'])} ± {fixed(r['bpb_se'])} | {where} |")
    lines.append("")
    lines += _optimal_size_lines(groups, front)
    lines += _multiplier_lines(front, fits)
    return lines + [""]


def _optimal_size_lines(groups: pd.DataFrame, front: pd.DataFrame) -> list[str]:
    sizes = fit_optimal_size(groups, front)
    n_inside = front.groupby("objective")["interior"].sum()
    if not sizes:
        return [f"_No fit of the optimal size against compute: it needs an interior optimum at two or more "
                f"budgets (interior budgets: {', '.join(f'{o} {int(n)}' for o, n in n_inside.items())})._",
                ""]
    lines = ["Compute-optimal size against compute, `N_opt = k * C^a` over the budgets with an interior "
             "optimum (each refined by a parabola in ln N through the minimum and its neighbours, Hoffmann "
             "et al. 2022, approach 2; Chinchilla's a is about 0.5):", "",
             "| objective | interior budgets | a [95% CI] | N_opt at those budgets |", "|---|---:|---|---|"]
    for obj in [o for o in objectives_in(front) if o in sizes]:
        f = sizes[obj]
        pts = ", ".join(f"{sig(n / 1e6, 2)}M @ {sig(c)}" for c, n in f["points"])
        lines.append(f"| {obj} | {len(f['points'])} | {fixed(f['exponent'], 3)} "
                     f"[{fixed(f['exponent_lo'], 3)}, {fixed(f['exponent_hi'], 3)}] | {pts} |")
    return lines + [""]


def _multiplier_lines(front: pd.DataFrame, fits: dict) -> list[str]:
    m = compute_multiplier(front, fits)
    if m.empty:
        return []
    lines = [f"Compute multiplier: the training FLOPs each objective needs, by its power law, to reach "
             f"{m['reference'].iloc[0]}'s compute-optimal loss at each budget, over that budget (Nie et al. "
             "report about 16x for MDLM at scale). 95% intervals by the delta method (the fit's and the "
             "reference's uncertainty); an upper bound's multiplier is an upper bound too. `extrapolated`: "
             "outside the budgets that objective was fitted on (within 3x); `far outside`: beyond, read "
             "as an order of magnitude only.", "",
             "| budget (FLOPs) | objective | reference bits/byte | FLOPs needed | "
             "multiplier [95% CI] | how |",
             "|---:|---|---:|---:|---|---|"]
    for _, r in m.sort_values(["budget", "objective"]).iterrows():
        lines.append(f"| {sig(r['budget'])} | {r['objective']} | {fixed(r['ref_bpb'])} | "
                     f"{sig(r['flops_needed'])} | {sig(r['multiplier'], 3)} "
                     f"[{sig(r['multiplier_lo'], 3)}, {sig(r['multiplier_hi'], 3)}] | {r['how']} |")
    return lines + [""]


def section(ctx: Context) -> str:
    pts = budget_points(ctx.table)
    if pts.empty:
        return gap(HEADING, "No finished runs of a known objective given a training-FLOP budget "
                            "(`train.flop_budget`): nothing to fit. `experiment=scaling_cpu` trains such "
                            "a sweep.")
    lines = [HEADING, "", _text(ctx), ""]
    settings = settings_of(pts)
    for i, setting in enumerate(settings):
        if len(settings) > 1:
            lines += [f"### {setting}", ""]
        suffix = "" if len(settings) == 1 else f"_{i + 1}"
        lines += _one_setting(ctx, pts[pts["setting"] == setting], suffix,
                              setting if len(settings) > 1 else "")
    return "\n".join(lines).rstrip() + "\n"
