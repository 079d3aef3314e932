"""Compute-matched comparison: scaling fits, IsoFLOP curves, the diffusion / AR headline ratio
and data repetition, from the tidy table of :func:`analysis.load.load_runs`. Never trains.

Which points count. A run enters the fits and tables when it **finished** (evaluated at its
last step), its objective is known (ar, mdlm, bd3lm) and it has a held-out figure; its last
evaluation is its point. The compute-matched sections (headline, IsoFLOP, scaling) use runs
given a training-FLOP budget (``train.flop_budget``) only, grouped by that budget and by size
(non-embedding parameters); runs given ``train.steps`` (a repetition sweep) stay out of them.
Seeds of the same (objective, size, budget) are averaged, and their spread gives the standard
error (one seed: the Monte-Carlo standard error of the diffusion bound; AR's figure is exact,
so 0).

**Data repetition.** Runs that record their unique training tokens get ``epochs = tokens /
unique tokens``; runs of the same size on the same unique data that differ in epochs, at least
one of them past one epoch, form a group drawn as bits per byte against epochs.

**Compute-optimal frontier.** For each objective and budget, the size with the lowest
seed-mean bits per byte (the minimum of the IsoFLOP curve, at the sizes measured).

**Power law.** ``L(C) = a * C^(-b)`` with ``L`` the held-out bits per byte and ``C`` the
training FLOPs: ordinary least squares of ``ln L`` on ``ln C`` (numpy) over every seed's point
at the frontier sizes, so ``n = budgets x seeds``. Confidence intervals (95%) come from the
covariance of the least-squares estimate with Student-t quantiles on ``n - 2`` degrees of
freedom (``scipy.stats`` when installed, else the normal 1.96, said so); the interval of
``a`` is that of ``ln a``, mapped back. Why not ``a * C^(-b) + c``: with 3 or 4 budgets per
objective an irreducible term is not identified (the three parameters trade off against each
other), so the fit describes the local slope over the measured range; it is not meant to be
extrapolated far. Diffusion figures are upper bounds, so their fitted curve is an upper bound
on the diffusion model's scaling curve.

**Headline ratio.** For every budget and diffusion objective: its frontier figure against
AR's frontier figure at the same FLOPs, as a perplexity ratio per byte,
``2^(bpb_diffusion - bpb_AR)``. When AR has a frontier point at the same budget it is used;
otherwise AR's frontier is interpolated at the diffusion run's FLOPs (linearly in
``ln bpb`` vs ``ln C``, i.e. a local power law between its two neighbours), or extrapolated
with AR's fitted power law up to 3x outside its range (marked); farther out, no ratio.
With the byte tokenizer (about one token per byte) the per-token perplexity ratio is the
same number; with a subword tokenizer the per-token ratio is the per-byte ratio raised to
the bytes per token. Because the diffusion figure is an upper bound (negative ELBO), the
ratio is an upper bound on the true perplexity ratio.

**Settings.** Held-out figures compare only on the same data, tokenizer, sequence length
and training split (the ``setting`` column of the table): the headline, IsoFLOP / scaling
and repetition sections compute per setting (one row group or figure each), and runs
trained on another split than ``train`` (a judge) are no contestants.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# Published diffusion / AR perplexity ratios, at far larger scale than this sandbox's runs.
REFERENCES = (
    ("MDLM vs AR", "OpenWebText (GPT-2 tokens, 262B tokens)", 1.32,
     "Sahoo et al. 2024 (MDLM), Table 2: AR 17.54 vs MDLM <= 23.21 test perplexity"),
    ("MDLM vs AR", "LM1B (33B tokens)", 1.21,
     "Sahoo et al. 2024 (MDLM), Table 1: AR 22.32 vs MDLM <= 27.04"),
    ("BD3LM (block 4) vs AR", "OpenWebText", 1.18,
     "Arriola et al. 2025 (BD3LM), Table 3: AR 17.54 vs BD3LM L'=4 <= 20.73"),
    ("MD4 vs AR", "text8 (bits per character)", 1.11,
     "Shi et al. 2024 (MD4), Table 1: 2^(MD4 <= 1.37 bpc - AR 1.23 bpc)"),
)


# --- fitting ---------------------------------------------------------------------------------
def t_quantile(dof: int, q: float = 0.975) -> tuple[float, str]:
    """(Student-t quantile, how it was obtained); the normal quantile without scipy."""
    try:
        from scipy import stats

        return float(stats.t.ppf(q, dof)), "Student-t (scipy.stats)"
    except ImportError:  # pragma: no cover - scipy comes with jax
        return 1.959963984540054, "normal approximation (scipy not installed)"


def fit_power_law(flops, loss, level: float = 0.95) -> dict | None:
    """Least-squares fit of ``loss = a * flops^(-b)`` in log-log space.

    Returns ``{a, b, a_lo, a_hi, b_lo, b_hi, n, dof, rmse_log, ci}`` (intervals NaN with no
    residual degrees of freedom), or None with fewer than two distinct ``flops`` values or a
    non-positive loss."""
    x = np.log(np.asarray(flops, dtype=np.float64))
    y_raw = np.asarray(loss, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y_raw) & (y_raw > 0)
    x, y = x[ok], np.log(y_raw[ok])
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return None
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    design = np.stack([np.ones(n), x - xm], axis=1)
    (alpha_c, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    alpha = alpha_c - beta * xm  # intercept at ln C = 0: ln a
    resid = y - (alpha_c + beta * (x - xm))
    dof = n - 2
    out = {"a": float(math.exp(alpha)), "b": float(-beta), "n": n, "dof": dof,
           "rmse_log": float(math.sqrt((resid ** 2).mean())), "ci": ""}
    if dof > 0:
        s2 = float((resid ** 2).sum() / dof)
        se_beta = math.sqrt(s2 / sxx)
        se_alpha = math.sqrt(s2 * (1.0 / n + xm ** 2 / sxx))
        tq, how = t_quantile(dof, 0.5 + level / 2)
        out.update(b_lo=float(-beta - tq * se_beta), b_hi=float(-beta + tq * se_beta),
                   a_lo=float(math.exp(alpha - tq * se_alpha)), a_hi=float(math.exp(alpha + tq * se_alpha)),
                   b_se=se_beta, ln_a_se=se_alpha, ci=f"{int(level * 100)}%, {how}, {dof} dof")
    else:
        out.update(b_lo=math.nan, b_hi=math.nan, a_lo=math.nan, a_hi=math.nan, b_se=math.nan,
                   ln_a_se=math.nan, ci="none (2 points, no residual degrees of freedom)")
    return out


def predict(fit: dict, flops) -> np.ndarray:
    return fit["a"] * np.asarray(flops, dtype=np.float64) ** (-fit["b"])


# --- points, groups, frontier ----------------------------------------------------------------
def objective_order(label: str) -> tuple:
    if label == "ar":
        return (0, 0, label)
    if label == "mdlm":
        return (1, 0, label)
    if label.startswith("bd3lm"):
        try:
            return (2, int(label[label.index("(") + 1:-1]), label)
        except ValueError:
            return (2, 0, label)
    return (3, 0, label)


def objective_color(label: str):
    if label == "ar":
        return "C0"
    if label == "mdlm":
        return "C1"
    if label.startswith("bd3lm"):
        k = objective_order(label)[1]
        return ["C2", "C3", "C4", "C5", "C6"][int(math.log2(k)) % 5 if k > 0 else 0]
    return "C7"


def _round_sig(x: float, sig: int = 2) -> float:
    if not x or not math.isfinite(x):
        return x
    return float(f"{x:.{sig - 1}e}")


def final_points(table: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of every finished run of a known objective, with ``cgroup`` (the
    compute budget it counts under)."""
    if table.empty:
        return table
    pts = table[table["final"] & table["finished"] & table["known_objective"] & table["val_bpb"].notna()]
    pts = pts.copy()
    pts["cgroup"] = [b if b == b else _round_sig(f) for b, f in zip(pts["budget"], pts["flops"])]
    return pts


def budget_points(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`final_points` of the runs given a training-FLOP budget (compute-matched runs) and
    trained on the train split (a judge, trained on ``test``, is no contestant)."""
    pts = final_points(table)
    if pts.empty:
        return pts
    split = pts["train.train_split"] if "train.train_split" in pts else pd.Series(None, index=pts.index)
    on_train = [v is None or v != v or v == "train" for v in split]
    return pts[pts["budget"].notna() & pd.Series(on_train, index=pts.index)]


def settings_of(points: pd.DataFrame) -> list[str]:
    """The settings (data, tokenizer, seq_len) present: figures are only compared within one."""
    return sorted(points["setting"].fillna("?").unique()) if not points.empty else []


def _se(g: pd.DataFrame) -> float:
    if len(g) >= 2:
        return float(g["val_bpb"].std(ddof=1) / math.sqrt(len(g)))
    mc = g["val_bpb_stderr"].iloc[0]
    return float(mc) if mc == mc else 0.0


def grouped(points: pd.DataFrame, keys=("objective", "params", "cgroup")) -> pd.DataFrame:
    """Seed means: one row per (objective, size, budget) with bpb_mean, bpb_se, n_seeds."""
    rows = []
    if points.empty:
        return pd.DataFrame(columns=[*keys, "size", "bpb_mean", "bpb_se", "flops", "tokens", "n_seeds"])
    for key, g in points.groupby(list(keys), dropna=False, sort=True):
        rows.append({**dict(zip(keys, key)), "size": g["size"].iloc[0],
                     "bpb_mean": float(g["val_bpb"].mean()), "bpb_se": _se(g),
                     "flops": float(g["flops"].mean()), "tokens": float(g["tokens"].mean()),
                     "n_seeds": len(g), "bound": g["bound"].iloc[0]})
    return pd.DataFrame(rows)


def frontier(groups: pd.DataFrame) -> pd.DataFrame:
    """Per (objective, budget): the size with the lowest seed-mean bits per byte."""
    if groups.empty:
        return groups
    idx = groups.groupby(["objective", "cgroup"])["bpb_mean"].idxmin()
    return groups.loc[sorted(idx)].sort_values(["objective", "cgroup"]).reset_index(drop=True)


def fit_all(points: pd.DataFrame, front: pd.DataFrame) -> dict[str, dict]:
    """objective -> power-law fit over every seed's point at its frontier sizes."""
    fits = {}
    for obj, f in front.groupby("objective"):
        keep = set(zip(f["params"], f["cgroup"]))
        p = points[(points["objective"] == obj)]
        p = p[[(a, c) in keep for a, c in zip(p["params"], p["cgroup"])]]
        fit = fit_power_law(p["flops"], p["val_bpb"])
        if fit is not None:
            fits[obj] = fit
    return fits


EXTRAPOLATE = 3.0  # AR's power law is used at most this factor of compute beyond its measured range


def _interp_ar(ar_front: pd.DataFrame, flops: float, ar_fit: dict | None):
    """(bpb, se, how) of AR's frontier at ``flops``."""
    ar_front = ar_front.sort_values("flops")
    xs, ys, ses = (np.log(ar_front["flops"].to_numpy()), np.log(ar_front["bpb_mean"].to_numpy()),
                   ar_front["bpb_se"].to_numpy())
    x = math.log(flops)
    if len(xs) and xs[0] <= x <= xs[-1]:
        if len(xs) == 1:
            return float(math.exp(ys[0])), float(ses[0]), "interpolated"
        return (float(math.exp(np.interp(x, xs, ys))), float(np.interp(x, xs, ses)),
                "interpolated (log-log)")
    if ar_fit is not None and xs[0] - math.log(EXTRAPOLATE) <= x <= xs[-1] + math.log(EXTRAPOLATE):
        return float(predict(ar_fit, flops)), math.nan, "extrapolated (AR power law)"
    return math.nan, math.nan, "no AR point near this compute"


def headline(points: pd.DataFrame, front: pd.DataFrame, fits: dict) -> pd.DataFrame:
    """One row per (budget, diffusion objective): frontier figures, AR at the same FLOPs,
    Δ bits/byte, per-byte perplexity ratio 2^Δ with a ±2 s.e. range."""
    rows = []
    if front.empty or not (front["objective"] == "ar").any():
        return pd.DataFrame(rows)
    ar = front[front["objective"] == "ar"]
    for _, d in front[front["objective"] != "ar"].iterrows():
        same = ar[ar["cgroup"] == d["cgroup"]]
        if len(same):
            a = same.iloc[0]
            ar_bpb, ar_se, how, ar_size = a["bpb_mean"], a["bpb_se"], "same budget", a["size"]
        else:
            ar_bpb, ar_se, how = _interp_ar(ar, d["flops"], fits.get("ar"))
            ar_size = "–"
        delta = d["bpb_mean"] - ar_bpb
        se = math.sqrt(d["bpb_se"] ** 2 + (ar_se if ar_se == ar_se else 0.0) ** 2)
        rows.append({"budget": d["cgroup"], "objective": d["objective"], "size": d["size"],
                     "flops": d["flops"], "bpb": d["bpb_mean"], "bpb_se": d["bpb_se"],
                     "n_seeds": d["n_seeds"],
                     "ar_size": ar_size, "ar_bpb": ar_bpb, "ar_se": ar_se, "ar_how": how, "delta": delta,
                     "delta_se": se, "ratio": 2.0 ** delta, "ratio_lo": 2.0 ** (delta - 2 * se),
                     "ratio_hi": 2.0 ** (delta + 2 * se)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_o"] = [objective_order(o) for o in out["objective"]]
    return out.sort_values(["budget", "_o"]).drop(columns="_o").reset_index(drop=True)


def same_size_ratios(groups: pd.DataFrame) -> pd.DataFrame:
    """Diffusion vs AR of the same size and budget (seed means), where both exist."""
    rows = []
    ar = {(r["params"], r["cgroup"]): r for _, r in groups[groups["objective"] == "ar"].iterrows()}
    for _, d in groups[groups["objective"] != "ar"].iterrows():
        a = ar.get((d["params"], d["cgroup"]))
        if a is None:
            continue
        delta = d["bpb_mean"] - a["bpb_mean"]
        se = math.sqrt(d["bpb_se"] ** 2 + a["bpb_se"] ** 2)
        rows.append({"budget": d["cgroup"], "size": d["size"], "params": d["params"],
                     "objective": d["objective"],
                     "bpb": d["bpb_mean"], "ar_bpb": a["bpb_mean"], "ratio": 2.0 ** delta,
                     "ratio_lo": 2.0 ** (delta - 2 * se), "ratio_hi": 2.0 ** (delta + 2 * se)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_o"] = [objective_order(o) for o in out["objective"]]
    return out.sort_values(["budget", "params", "_o"]).drop(columns="_o").reset_index(drop=True)


# --- formatting --------------------------------------------------------------------------------
def _f(x, nd=3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(x) else f"{x:.{nd}f}"


def _g(x, nd=3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(x) else f"{x:.{nd}g}"


def _ratio(r, bold: bool = False) -> str:
    if not math.isfinite(r["ratio"]):
        return "–"
    v = f"**{r['ratio']:.2f}**" if bold else f"{r['ratio']:.2f}"
    return f"{v} [{_f(r['ratio_lo'], 2)}, {_f(r['ratio_hi'], 2)}]"


def _objectives(labels) -> list[str]:
    return sorted(set(labels), key=objective_order)


def plain_log_ticks(ax, which: str = "xy") -> None:
    """Plain numbers (1, 2, 4 / 3, 4) instead of powers on the log axes of ``ax``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for w in which:
        axis = ax.xaxis if w == "x" else ax.yaxis
        if axis.get_scale() == "log":
            axis.set_major_formatter(plain)
            lo, hi = sorted(axis.get_view_interval())
            # within one decade no major tick may be in view: label the minor ones instead
            axis.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else NullFormatter())


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=110)
    plt.close(fig)
    return name


BOUND_NOTE = ("AR figures are exact; **diffusion figures (mdlm, bd3lm) are upper bounds** (negative "
              "ELBO), so every diffusion number below and every diffusion / AR ratio overstates the "
              "diffusion model's true loss.")


# --- sections ----------------------------------------------------------------------------------
HEADLINE_TEXT = (
    "Perplexity ratio **per byte**, `2^(bpb_diffusion - bpb_AR)`, of the compute-optimal size "
    "of each objective at each budget (the lowest seed-mean held-out bits per byte among the "
    "sizes trained; `analysis/scaling.py` says how AR is matched when budgets differ). With the "
    "byte tokenizer this is also the per-token ratio. " + BOUND_NOTE + " Brackets: ±2 standard "
    "errors (seed spread, or the Monte-Carlo error of the bound for a single seed). Only runs "
    "given `train.flop_budget` and trained on the train split count.")


def section_headline(df, out: Path, ctx: dict) -> str:
    head = "## Headline: diffusion vs AR perplexity at matched training FLOPs\n\n"
    pts = budget_points(ctx["table"])
    refs = ["Published ratios, for context only: they come from models and data far larger than "
            "these runs (hundreds of millions of parameters, billions of tokens), on other corpora "
            "and tokenizers.", "",
            "| comparison | data | perplexity ratio | source |", "|---|---|---:|---|"]
    refs += [f"| {c} | {d} | ~{r:.2f} | {s} |" for c, d, r, s in REFERENCES]
    heads, sizes = [], []
    for setting in settings_of(pts):
        p = pts[pts["setting"] == setting]
        if not ((p["objective"] == "ar").any() and (p["objective"] != "ar").any()):
            continue
        groups = grouped(p)
        front = frontier(groups)
        heads.append(headline(p, front, fit_all(p, front)).assign(setting=setting))
        sizes.append(same_size_ratios(groups).assign(setting=setting))
    if not heads:
        have = "; ".join(f"{st}: {', '.join(_objectives(pts[pts['setting'] == st]['objective']))}"
                         for st in settings_of(pts)) or "none"
        return head + ("_Not computed: needs finished runs of AR and of a diffusion objective given a "
                       "training-FLOP budget (`train.flop_budget`) in the same setting (finished ones "
                       f"here: {have}). Train e.g. `python -m sandbox.train -m experiment=scaling_cpu`._\n\n"
                       ) + "\n".join(refs) + "\n"
    h, ss = pd.concat(heads, ignore_index=True), pd.concat(sizes, ignore_index=True)
    many = len(settings_of(pts)) > 1
    sc, sh = ("{setting} | ", "setting | ") if many else ("", "")
    lines = [head.rstrip(), "", HEADLINE_TEXT, ""]
    if h.empty:
        lines += ["_No diffusion budget could be matched with AR._", ""]
    else:
        lines += [f"| {sh}budget (FLOPs) | diffusion | size | bits/byte (upper bound) | AR size | "
                  "AR bits/byte | AR matched by | Δ bits/byte | ppl ratio [±2 s.e.] |",
                  "|" + "---|" * many + "---:|---|---|---:|---|---:|---|---:|---|"]
        for _, r in h.iterrows():
            lines.append(f"| {sc.format(setting=r['setting'])}{_g(r['budget'])} | {r['objective']} | "
                         f"{r['size']} | {_f(r['bpb'])} ± {_f(r['bpb_se'])} | {r['ar_size']} | "
                         f"{_f(r['ar_bpb'])} | {r['ar_how']} | {_f(r['delta'])} | {_ratio(r, bold=True)} |")
        lines.append("")
    lines += refs
    if not ss.empty:
        lines += ["", "<details><summary>Every size: diffusion vs AR of the same size and budget"
                  "</summary>", "", f"| {sh}budget (FLOPs) | size | diffusion | bits/byte (upper bound) | "
                  "AR bits/byte | ppl ratio [±2 s.e.] |",
                  "|" + "---|" * many + "---:|---|---|---:|---:|---|"]
        for _, r in ss.iterrows():
            lines.append(f"| {sc.format(setting=r['setting'])}{_g(r['budget'])} | {r['size']} | "
                         f"{r['objective']} | {_f(r['bpb'])} | {_f(r['ar_bpb'])} | {_ratio(r)} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _curve_axes(n: int):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4), squeeze=False, sharey=True)
    return fig, axes[0]


def plot_bpb_curves(table: pd.DataFrame, out: Path) -> list[str]:
    """bpb_vs_tokens.png and bpb_vs_flops.png: one panel per objective, one colour per size,
    every evaluation of every run (thin lines) and the finished runs' final points."""
    ev = table[table["known_objective"] & table["val_bpb"].notna()]
    objs = _objectives(ev["objective"])
    if not objs:
        return []
    sizes = sorted(set(zip(ev["params"].fillna(-1), ev["size"])))
    cmap = plt.get_cmap("viridis")
    color = {s: cmap(i / max(len(sizes) - 1, 1) * 0.9) for i, (_, s) in enumerate(sizes)}
    files = []
    for xcol, xlabel, name in (("tokens", "training tokens", "bpb_vs_tokens.png"),
                               ("flops", "training FLOPs", "bpb_vs_flops.png")):
        fig, axes = _curve_axes(len(objs))
        for ax, obj in zip(axes, objs):
            e = ev[ev["objective"] == obj]
            for _run, g in e.groupby("run", sort=True):
                g = g.sort_values("step")
                ax.plot(g[xcol], g["val_bpb"], color=color[g["size"].iloc[0]], alpha=0.35, lw=1)
                last = g.iloc[-1]
                ax.scatter([last[xcol]], [last["val_bpb"]], color=color[last["size"]], s=18,
                           marker="o" if last["finished"] else "x", zorder=3)
            ax.set(xscale="log", xlabel=xlabel, title=obj + (" (upper bound)" if obj != "ar" else " (exact)"))
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel("held-out bits per byte")
        for _, s in sizes:
            axes[-1].plot([], [], color=color[s], label=s)
        axes[-1].scatter([], [], color="grey", marker="x", label="unfinished run")
        axes[-1].legend(fontsize=7, title="size", title_fontsize=7)
        files.append(_save(fig, out, name))
    return files


def section_curves(df, out: Path, ctx: dict) -> str:
    head = "## Held-out bits per byte vs tokens and FLOPs, per objective and size\n\n"
    table = ctx["table"]
    if table.empty or not (table["known_objective"] & table["val_bpb"].notna()).any():
        return head + "_No evaluations of a known objective (ar, mdlm, bd3lm) in these runs._\n"
    files = plot_bpb_curves(table, out)
    return head + ("Every evaluation of every run (EMA weights, validation split); dots: the last evaluation "
                   "of a finished run, crosses: of an unfinished one. " + BOUND_NOTE + "\n\n"
                   + "\n\n".join(f"![{f}]({f})" for f in files) + "\n")


def plot_isoflop(groups: pd.DataFrame, front: pd.DataFrame, out: Path, name: str = "isoflop.png",
                 setting: str = "") -> str:
    objs = _objectives(groups["objective"])
    budgets = sorted(groups["cgroup"].unique())
    cmap = plt.get_cmap("plasma")
    fig, axes = _curve_axes(len(objs))
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
        ax.set(xscale="log", xlabel="non-embedding parameters",
               title=f"{obj}: IsoFLOP curves" + (" (upper bound)" if obj != "ar" else ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out bits per byte (seed mean)")
    if setting:
        fig.suptitle(setting, fontsize=9)
    return _save(fig, out, name)


def plot_scaling(front: pd.DataFrame, fits: dict, out: Path, name: str = "scaling.png",
                 setting: str = "") -> str:
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for obj in _objectives(front["objective"]):
        f = front[front["objective"] == obj].sort_values("flops")
        col = objective_color(obj)
        ax.errorbar(f["flops"], f["bpb_mean"], yerr=f["bpb_se"], color=col, marker="o", ls="none", capsize=2)
        fit = fits.get(obj)
        if fit is not None:
            xs = np.geomspace(f["flops"].min(), f["flops"].max(), 50)
            bound = " (upper bound)" if obj != "ar" else ""
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
    return _save(fig, out, name)


SCALING_TEXT = (
    "IsoFLOP: held-out bits per byte against model size at each training-FLOP budget (seed "
    "mean ± s.e.); stars mark the compute-optimal size among those trained. Scaling: those "
    "optima against compute, with the power law `L = a * C^(-b)` (L in bits per byte, C in "
    "training FLOPs) fitted by least squares of ln L on ln C over every seed's point at the "
    "optimal sizes; 95% intervals from the fit's covariance. A 2-parameter law is used because "
    "3-4 budgets cannot identify an irreducible-loss term; read the exponent as the local slope "
    "over the budgets measured. " + BOUND_NOTE)


def _scaling_setting(pts: pd.DataFrame, out: Path, suffix: str, setting: str) -> list[str]:
    groups = grouped(pts)
    front = frontier(groups)
    fits = fit_all(pts, front)
    files = [plot_isoflop(groups, front, out, f"isoflop{suffix}.png", setting),
             plot_scaling(front, fits, out, f"scaling{suffix}.png", setting)]
    lines = ["\n\n".join(f"![{f}]({f})" for f in files), ""]
    if fits:
        lines += ["| objective | budgets | points | a [95% CI] | b [95% CI] | rms residual (ln) | interval |",
                  "|---|---:|---:|---|---|---:|---|"]
        for obj in _objectives(fits):
            f = fits[obj]
            nb = int((front["objective"] == obj).sum())
            lines.append(f"| {obj} | {nb} | {f['n']} | {_g(f['a'], 4)} [{_g(f['a_lo'], 3)}, "
                         f"{_g(f['a_hi'], 3)}] | {_f(f['b'], 4)} [{_f(f['b_lo'], 4)}, "
                         f"{_f(f['b_hi'], 4)}] | {_f(f['rmse_log'], 4)} | {f['ci']} |")
        lines.append("")
    missing = [o for o in _objectives(front["objective"]) if o not in fits]
    if missing:
        lines += [f"_No fit for {', '.join(missing)}: a power law needs finished runs at two or more "
                  "budgets._", ""]
    lines += ["Compute-optimal points:", "", "| objective | budget (FLOPs) | size | FLOPs | tokens | seeds | "
              "bits/byte ± s.e. |", "|---|---:|---|---:|---:|---:|---|"]
    for _, r in front.assign(_o=[objective_order(o) for o in front["objective"]]).sort_values(
            ["_o", "cgroup"]).iterrows():
        lines.append(f"| {r['objective']} | {_g(r['cgroup'])} | {r['size']} | {_g(r['flops'])} | "
                     f"{_g(r['tokens'])} | {r['n_seeds']} | {_f(r['bpb_mean'])} ± {_f(r['bpb_se'])} |")
    return lines + [""]


def section_scaling(df, out: Path, ctx: dict) -> str:
    head = "## IsoFLOP curves and scaling fits\n\n"
    pts = budget_points(ctx["table"])
    if pts.empty:
        return head + ("_No finished runs of a known objective given a training-FLOP budget "
                       "(`train.flop_budget`): nothing to fit. `experiment=scaling_cpu` trains such "
                       "a sweep._\n")
    lines = [head.rstrip(), "", SCALING_TEXT, ""]
    settings = settings_of(pts)
    for i, setting in enumerate(settings):
        if len(settings) > 1:
            lines += [f"### {setting}", ""]
        suffix = "" if len(settings) == 1 else f"_{i + 1}"
        lines += _scaling_setting(pts[pts["setting"] == setting], out, suffix,
                                  setting if len(settings) > 1 else "")
    return "\n".join(lines).rstrip() + "\n"


# --- data repetition ---------------------------------------------------------------------------
def plot_repetition(pts: pd.DataFrame, xcol: str, xlabel: str, group_cols: list[str], out: Path,
                    name: str = "repetition.png") -> tuple[str, list[tuple]]:
    """One panel per group (fixed unique data and size): bits/byte vs ``xcol`` per objective."""
    groups = []
    for key, g in pts.groupby(group_cols, sort=True, dropna=False):
        if g[xcol].round(6).nunique() >= 2:
            groups.append((key, g))
    fig, axes = _curve_axes(max(len(groups), 1))
    for ax, (_key, g) in zip(axes, groups):
        for obj in _objectives(g["objective"]):
            m = grouped(g[g["objective"] == obj].assign(x=g[xcol].round(6)), keys=("objective", "x"))
            m = m.sort_values("x")
            ax.errorbar(m["x"], m["bpb_mean"], yerr=m["bpb_se"], marker="o", ms=4, capsize=2,
                        color=objective_color(obj), label=obj + (" (upper bound)" if obj != "ar" else ""))
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
    return _save(fig, out, name), groups


REP_KEYS = ["setting", "unique_tokens", "params"]


def section_repetition(df, out: Path, ctx: dict) -> str:
    head = "## Data repetition: bits per byte vs epochs at fixed unique data\n\n"
    pts = final_points(ctx["table"])
    if pts.empty:
        return head + "_No finished runs of a known objective: nothing to plot._\n"
    rep = pts[pts["epochs"].notna() & pts["params"].notna()]
    if not rep.empty:
        by = rep.groupby(REP_KEYS)["epochs"]
        rep = rep[(by.transform(lambda e: e.round(6).nunique()) >= 2) & (by.transform("max") > 1)]
    if not rep.empty:
        name, groups = plot_repetition(rep, "epochs", "epochs (tokens seen / unique training tokens)",
                                       REP_KEYS, out)
        lines = [head.rstrip(), "",
                 "Each point: the last evaluation of finished runs that saw the same unique training data "
                 "for a different number of epochs (seed mean ± s.e.). " + BOUND_NOTE + " So where a "
                 "diffusion curve lies below AR's, diffusion is better for certain; where it lies above, "
                 "the gap may be smaller than drawn.", "", f"![{name}]({name})", ""]
        for _key, g in groups:
            first = g.iloc[0]
            objs = _objectives(g["objective"])
            lines += [f"{first['size']}, {first['unique_tokens']:,.0f} unique tokens "
                      f"({first['setting']}):", "",
                      "| epochs | " + " | ".join(objs) + " |", "|---:|" + "---:|" * len(objs)]
            m = grouped(g.assign(x=g["epochs"].round(6)), keys=("objective", "x"))
            over = []
            for x in sorted(m["x"].unique()):
                mx = m[m["x"] == x].set_index("objective")
                cells = [_f(mx.loc[o, "bpb_mean"]) if o in mx.index else "–" for o in objs]
                lines.append(f"| {_g(x)} | " + " | ".join(cells) + " |")
                if "ar" in mx.index:
                    ar_x = mx.loc["ar", "bpb_mean"]
                    better = [o for o in mx.index if o != "ar" and mx.loc[o, "bpb_mean"] < ar_x]
                    if better:
                        over.append(f"{_g(x)} epochs ({', '.join(sorted(better, key=objective_order))})")
            if "ar" not in objs or len(objs) < 2:
                verdict = "_No AR runs, or no diffusion runs, in this group to compare._"
            elif over:
                verdict = "Diffusion's upper bound is below AR's exact figure at " + "; ".join(over) + "."
            else:
                verdict = "AR stays ahead of every diffusion objective at every epoch count measured."
            lines += ["", verdict, ""]
        return "\n".join(lines) + "\n"
    gap = ("_Epochs unknown: no run records its number of unique training tokens (the meta line of "
           "`metrics.jsonl` would carry `unique_tokens`, or the config `train.unique_tokens` / "
           "`data.unique_tokens`), so bits/byte cannot be drawn against epochs._")
    steps_runs = pts[pts["budget"].isna() & pts["params"].notna()]
    if steps_runs.empty:
        return head + gap + " _No runs given train.steps (a repetition sweep such as "\
                            "`experiment=repetition_cpu`) were found either._\n"
    if not steps_runs.empty:
        steps_runs = steps_runs[steps_runs.groupby(["setting", "params"])["tokens"].transform(
            lambda t: t.round(6).nunique()) >= 2]
    if steps_runs.empty:
        return head + gap + " _No group of runs on the same data and model with different lengths either._\n"
    name, groups = plot_repetition(steps_runs, "tokens", "training tokens seen (epochs unknown)",
                                   ["setting", "params"], out, name="repetition_tokens.png")
    keys = "; ".join(f"{g.iloc[0]['size']}: {g.iloc[0]['setting']}" for _, g in groups)
    return (head + gap + "\n\nInstead: runs given `train.steps` on the same data and model, against "
            "tokens seen (epochs = tokens / unique training tokens, a constant per panel). "
            f"Panels: {keys}. {BOUND_NOTE}\n\n![{name}]({name})\n")


# --- run status --------------------------------------------------------------------------------
def section_runs(df, out: Path, ctx: dict) -> str:
    table = ctx["table"]
    head = "## Runs\n\n"
    if table.empty:
        return head + "_No run folders._\n"
    last = table[table["final"]]
    n_ok = int((last["finished"] & last["known_objective"]).sum())
    lines = [head.rstrip(), "", f"{len(last)} run folders; {n_ok} finished runs of a known objective "
             "enter the tables and fits above. Flagged runs (left out of the fits and the headline):", ""]
    flagged = last[last["problems"] != ""]
    if flagged.empty:
        return "\n".join(lines[:-2]) + "\n\nNo run is flagged.\n"
    lines += ["| run folder | objective | size | step | problem |", "|---|---|---|---:|---|"]
    for _, r in flagged.iterrows():
        step = "–" if r["step"] != r["step"] else int(r["step"])
        lines.append(f"| `{r['run_name']}` | {r['objective']} | {r['size']} | {step} | {r['problems']} |")
    return "\n".join(lines) + "\n"
