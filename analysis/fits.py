"""Fits and comparisons of the compute-matched study, from the tidy table (:mod:`analysis.table`).

**Which points count.** A run enters the fits and tables when it **finished** (evaluated at its
last step), its bound is recorded (exact or upper) and it has a held-out figure; its last
evaluation is its point (:func:`final_points`). The compute-matched comparisons use runs given a
training-FLOP budget (``train.flop_budget``) and trained on the train split only
(:func:`budget_points`), grouped by that budget and by size (non-embedding parameters). Seeds of
the same (objective, size, budget) are averaged (:func:`grouped`), and their spread gives the
standard error (one seed: the Monte-Carlo standard error of an upper bound; an exact figure has
none, so 0).

**Compute-optimal frontier.** For each objective and budget, the size with the lowest seed-mean
bits per byte (the minimum of the IsoFLOP curve, at the sizes measured): :func:`frontier`.

**Power law.** ``L(C) = a * C^(-b)`` with ``L`` the held-out bits per byte and ``C`` the training
FLOPs: ordinary least squares of ``ln L`` on ``ln C`` (numpy) over every seed's point at the
frontier sizes, so ``n = budgets x seeds``. Confidence intervals (95%) come from the covariance
of the least-squares estimate with Student-t quantiles on ``n - 2`` degrees of freedom
(``scipy.stats`` when installed, else the normal 1.96, said so); the interval of ``a`` is that of
``ln a``, mapped back. Why not ``a * C^(-b) + c``: with 3 or 4 budgets per objective an
irreducible term is not identified (the three parameters trade off against each other), so the
fit describes the local slope over the measured range; it is not meant to be extrapolated far.
An upper bound's fitted curve is an upper bound on that model's scaling curve.

**Headline ratio.** The reference is the first objective with an exact likelihood (the report
order of :mod:`analysis.labels`). For every budget and every other objective: its frontier
figure against the reference's frontier figure at the same FLOPs, as a perplexity ratio per
byte, ``2^(bpb_other - bpb_reference)``. When the reference has a frontier point at the same
budget it is used; otherwise its frontier is interpolated at the other run's FLOPs (linearly in
``ln bpb`` vs ``ln C``, i.e. a local power law between its two neighbours), or extrapolated with
its fitted power law up to :data:`EXTRAPOLATE` x outside its range (marked); farther out, no
ratio. With the byte tokenizer (about one token per byte) the per-token perplexity ratio is the
same number; with a subword tokenizer the per-token ratio is the per-byte ratio raised to the
bytes per token. Where the other figure is an upper bound (negative ELBO), so is the ratio.

**Settings.** Held-out figures compare only on the same data, tokenizer, sequence length and
training split (the ``setting`` column of the table): callers compute per setting
(:func:`settings_of`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.labels import bounds_of, order_key, reference_objective

EXTRAPOLATE = 3.0  # the reference's power law is used at most this factor of compute beyond its range


# --- the power law ---------------------------------------------------------------------------
def t_quantile(dof: int, q: float = 0.975) -> tuple[float, str]:
    """(Student-t quantile, how it was obtained); the normal quantile without scipy."""
    try:
        from scipy import stats

        return float(stats.t.ppf(q, dof)), "Student-t (scipy.stats)"
    except ImportError:  # the report's own dependencies do not include scipy
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
           "rmse_log": float(math.sqrt((resid ** 2).mean())), "ci": "",
           # the centred form ln L = alpha_c + beta (ln C - xm): its two estimates are uncorrelated,
           # which is what the delta method of compute_multiplier needs
           "alpha_c": float(alpha_c), "xm": float(xm), "x_lo": float(x.min()), "x_hi": float(x.max())}
    if dof > 0:
        s2 = float((resid ** 2).sum() / dof)
        se_beta = math.sqrt(s2 / sxx)
        se_alpha = math.sqrt(s2 * (1.0 / n + xm ** 2 / sxx))
        tq, how = t_quantile(dof, 0.5 + level / 2)
        out.update(alpha_c_se=math.sqrt(s2 / n), tq=tq)
        out.update(b_lo=float(-beta - tq * se_beta), b_hi=float(-beta + tq * se_beta),
                   a_lo=float(math.exp(alpha - tq * se_alpha)), a_hi=float(math.exp(alpha + tq * se_alpha)),
                   b_se=se_beta, ln_a_se=se_alpha, ci=f"{int(level * 100)}%, {how}, {dof} dof")
    else:
        out.update(b_lo=math.nan, b_hi=math.nan, a_lo=math.nan, a_hi=math.nan, b_se=math.nan,
                   ln_a_se=math.nan, alpha_c_se=math.nan, tq=math.nan,
                   ci="none (2 points, no residual degrees of freedom)")
    return out


def predict(fit: dict, flops) -> np.ndarray:
    return fit["a"] * np.asarray(flops, dtype=np.float64) ** (-fit["b"])


# --- points, groups, frontier ----------------------------------------------------------------
def _round_sig(x: float, sig: int = 2) -> float:
    if not x or not math.isfinite(x):
        return x
    return float(f"{x:.{sig - 1}e}")


def final_points(table: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of every finished run with a recorded bound, with ``cgroup`` (the
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


def objectives_in(frame: pd.DataFrame) -> list[str]:
    """The objectives of a frame (``objective`` and ``bound`` columns) in report order."""
    b = bounds_of(frame)
    return sorted(b, key=lambda o: order_key(o, b[o]))


def _se(g: pd.DataFrame) -> float:
    if len(g) >= 2:
        return float(g["val_bpb"].std(ddof=1) / math.sqrt(len(g)))
    mc = g["val_bpb_stderr"].iloc[0]
    return float(mc) if mc == mc else 0.0


def grouped(points: pd.DataFrame, keys=("objective", "params", "cgroup")) -> pd.DataFrame:
    """Seed means: one row per (objective, size, budget) with bpb_mean, bpb_se, n_seeds."""
    rows = []
    if points.empty:
        return pd.DataFrame(columns=[*keys, "size", "bpb_mean", "bpb_se", "flops", "tokens", "n_seeds",
                                     "bound"])
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


def _interp_reference(ref_front: pd.DataFrame, flops: float, ref_fit: dict | None):
    """(bpb, se, how) of the reference's frontier at ``flops``."""
    ref_front = ref_front.sort_values("flops")
    xs, ys, ses = (np.log(ref_front["flops"].to_numpy()), np.log(ref_front["bpb_mean"].to_numpy()),
                   ref_front["bpb_se"].to_numpy())
    x = math.log(flops)
    if len(xs) and xs[0] <= x <= xs[-1]:
        if len(xs) == 1:
            return float(math.exp(ys[0])), float(ses[0]), "interpolated"
        return (float(math.exp(np.interp(x, xs, ys))), float(np.interp(x, xs, ses)),
                "interpolated (log-log)")
    if ref_fit is not None and xs[0] - math.log(EXTRAPOLATE) <= x <= xs[-1] + math.log(EXTRAPOLATE):
        return float(predict(ref_fit, flops)), math.nan, "extrapolated (reference power law)"
    return math.nan, math.nan, "no reference point near this compute"


def _ordered(out: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out["_o"] = [order_key(o, b) for o, b in zip(out["objective"], out["bound"])]
    return out.sort_values([*keys, "_o"]).drop(columns="_o").reset_index(drop=True)


def headline(points: pd.DataFrame, front: pd.DataFrame, fits: dict, reference: str | None = None
             ) -> pd.DataFrame:
    """One row per (budget, objective other than the reference): frontier figures, the
    reference at the same FLOPs (``ref_*`` columns), Δ bits/byte and the per-byte perplexity
    ratio 2^Δ with a ±2 s.e. range. ``reference``: default, the first exact objective."""
    rows = []
    reference = reference or reference_objective(bounds_of(front))
    if front.empty or reference is None or not (front["objective"] == reference).any():
        return pd.DataFrame(rows)
    ref = front[front["objective"] == reference]
    for _, d in front[front["objective"] != reference].iterrows():
        same = ref[ref["cgroup"] == d["cgroup"]]
        if len(same):
            a = same.iloc[0]
            ref_bpb, ref_se, how, ref_size = a["bpb_mean"], a["bpb_se"], "same budget", a["size"]
        else:
            ref_bpb, ref_se, how = _interp_reference(ref, d["flops"], fits.get(reference))
            ref_size = "–"
        delta = d["bpb_mean"] - ref_bpb
        se = math.sqrt(d["bpb_se"] ** 2 + (ref_se if ref_se == ref_se else 0.0) ** 2)
        rows.append({"budget": d["cgroup"], "objective": d["objective"], "bound": d["bound"],
                     "size": d["size"], "flops": d["flops"], "bpb": d["bpb_mean"], "bpb_se": d["bpb_se"],
                     "n_seeds": d["n_seeds"], "reference": reference,
                     "ref_size": ref_size, "ref_bpb": ref_bpb, "ref_se": ref_se, "ref_how": how,
                     "delta": delta, "delta_se": se, "ratio": 2.0 ** delta,
                     "ratio_lo": 2.0 ** (delta - 2 * se), "ratio_hi": 2.0 ** (delta + 2 * se)})
    out = pd.DataFrame(rows)
    return out if out.empty else _ordered(out, ["budget"])


def same_size_ratios(groups: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Each objective vs the reference of the same size and budget (seed means), where both exist."""
    rows = []
    reference = reference or reference_objective(bounds_of(groups))
    if groups.empty or reference is None:
        return pd.DataFrame(rows)
    ref = {(r["params"], r["cgroup"]): r for _, r in groups[groups["objective"] == reference].iterrows()}
    for _, d in groups[groups["objective"] != reference].iterrows():
        a = ref.get((d["params"], d["cgroup"]))
        if a is None:
            continue
        delta = d["bpb_mean"] - a["bpb_mean"]
        se = math.sqrt(d["bpb_se"] ** 2 + a["bpb_se"] ** 2)
        rows.append({"budget": d["cgroup"], "size": d["size"], "params": d["params"],
                     "objective": d["objective"], "bound": d["bound"], "reference": reference,
                     "bpb": d["bpb_mean"], "ref_bpb": a["bpb_mean"], "ratio": 2.0 ** delta,
                     "ratio_lo": 2.0 ** (delta - 2 * se), "ratio_hi": 2.0 ** (delta + 2 * se)})
    out = pd.DataFrame(rows)
    return out if out.empty else _ordered(out, ["budget", "params"])


# --- crossovers ------------------------------------------------------------------------------
def _last_crossing(lx: np.ndarray, d: np.ndarray) -> float | None:
    """log2 x from which ``d`` stays <= 0 to the end of the range: linear in log2 x between the
    last point with ``d > 0`` and the next; -inf when ``d <= 0`` everywhere, None when the last
    point has ``d > 0``."""
    above = np.flatnonzero(d > 0)
    if len(above) == 0:
        return -math.inf
    i = int(above[-1])
    if i == len(d) - 1:
        return None
    return float(lx[i] + (lx[i + 1] - lx[i]) * d[i] / (d[i] - d[i + 1]))


def crossover(x, delta, se, z: float = 1.96) -> dict:
    """Where a curve overtakes the reference for good: the ``x`` (e.g. epochs) from which
    ``delta`` (its bits/byte minus the reference's, so negative = ahead) stays at or below 0 to
    the end of the range, by linear interpolation in ``log2 x`` between the last point where the
    reference is ahead and the next. (An early lead that is lost again, e.g. at one epoch of a
    few steps where neither model has learned much, is not a crossover; ``ahead_at`` lists every
    x where the curve is ahead.)

    The interval repeats that on ``delta - z se`` (the earliest crossing consistent with the
    noise: ``lo``) and ``delta + z se`` (the latest: ``hi``). Returns ``{x, lo, hi, status}``:
    ``status`` is ``crosses`` (x measured), ``never`` (ahead nowhere in range: x None), or
    ``from_start`` (ahead at every x: x = the first x). ``lo`` is None when even
    the earliest bound is at or before the first point (``<= first x``); ``hi`` None when the
    latest lies beyond the range. Points need not be sorted; NaN rows are dropped."""
    x, delta, se = (np.asarray(v, dtype=np.float64) for v in (x, delta, se))
    ok = np.isfinite(x) & (x > 0) & np.isfinite(delta)
    x, delta, se = x[ok], delta[ok], np.nan_to_num(se[ok], nan=0.0)
    if len(x) == 0:
        return {"x": None, "lo": None, "hi": None, "status": "no points", "ahead_at": []}
    order = np.argsort(x)
    lx, d, s = np.log2(x[order]), delta[order], se[order]

    def at(v):
        c = _last_crossing(lx, v)
        return c if c is None or c == -math.inf else float(2.0 ** c)

    mid, early, late = at(d), at(d - z * s), at(d + z * s)
    first = float(2.0 ** lx[0])
    if mid is None:
        status, mid = "never", None
    elif mid == -math.inf:
        status, mid = "from_start", first
    else:
        status = "crosses"
    lo = None if early is None or early == -math.inf or early <= first else early
    hi = None if late is None else (first if late == -math.inf else late)
    ahead = [float(2.0 ** v) for v, dv in zip(lx, d) if dv <= 0]
    return {"x": mid, "lo": lo, "hi": hi, "status": status, "ahead_at": ahead}


# --- the compute-optimal size and the compute multiplier --------------------------------------
def mark_interior(groups: pd.DataFrame, front: pd.DataFrame) -> pd.DataFrame:
    """``front`` with ``interior``: True where the optimum has a smaller and a larger size trained
    at the same budget (a minimum inside the grid, not at its edge), and ``n_sizes``."""
    if front.empty:
        return front.assign(interior=[], n_sizes=[])
    inside, sizes = [], []
    for _, r in front.iterrows():
        g = groups[(groups["objective"] == r["objective"]) & (groups["cgroup"] == r["cgroup"])]
        inside.append(bool((g["params"] < r["params"]).any() and (g["params"] > r["params"]).any()))
        sizes.append(int(g["params"].nunique()))
    return front.assign(interior=inside, n_sizes=sizes)


def refine_optimum(groups: pd.DataFrame, objective: str, budget: float) -> float | None:
    """The compute-optimal size between grid points: a parabola in ln N through the IsoFLOP
    minimum and its two neighbours (Hoffmann et al. 2022, approach 2), its vertex. None when
    the minimum is at the edge of the sizes trained (no bracket) or the parabola opens down."""
    g = groups[(groups["objective"] == objective) & (groups["cgroup"] == budget)].sort_values("params")
    if len(g) < 3:
        return None
    i = int(np.argmin(g["bpb_mean"].to_numpy()))
    if i == 0 or i == len(g) - 1:
        return None
    x = np.log(g["params"].to_numpy()[i - 1:i + 2].astype(np.float64))
    y = g["bpb_mean"].to_numpy()[i - 1:i + 2].astype(np.float64)
    c2, c1, _ = np.polyfit(x, y, 2)
    if c2 <= 0:
        return None
    return float(math.exp(min(max(-c1 / (2 * c2), x[0]), x[-1])))


def fit_optimal_size(groups: pd.DataFrame, front: pd.DataFrame) -> dict[str, dict]:
    """objective -> power law ``N_opt = k * C^a`` over the budgets whose optimum is interior
    (refined by :func:`refine_optimum`), with ``points`` [(flops, N_opt)]: ``fit_power_law``'s
    ``b`` is ``-a`` (its law decreases). Two interior budgets or more, else no fit."""
    out = {}
    for obj, f in front.groupby("objective"):
        pts = [(r["flops"], refine_optimum(groups, obj, r["cgroup"])) for _, r in f.iterrows()]
        pts = [(c, n) for c, n in pts if n is not None]
        fit = fit_power_law([c for c, _ in pts], [n for _, n in pts]) if len(pts) >= 2 else None
        if fit is not None:
            out[obj] = {**fit, "exponent": -fit["b"], "exponent_lo": -fit["b_hi"],
                        "exponent_hi": -fit["b_lo"], "points": pts}
    return out


def compute_multiplier(front: pd.DataFrame, fits: dict, reference: str | None = None,
                       level: float = 0.95) -> pd.DataFrame:
    """How many times the reference's training compute another objective needs to reach the
    reference's loss: per budget and objective, ``C' / C`` where the objective's power law meets
    the reference's frontier figure ``L_ref(C)`` (Nie et al. 2024 report about 16x for MDLM at
    scale). ``ln C' = xm + (ln L_ref - alpha_c) / beta`` (the objective's centred fit); its
    interval by the delta method over ``alpha_c``, ``beta`` (uncorrelated) and the reference's
    seed s.e., with the fit's Student-t quantile. ``how``: ``interpolated`` inside the fitted
    range, ``extrapolated`` within :data:`EXTRAPOLATE` x of it, ``far outside`` beyond (shown,
    flagged). Where the objective's loss is an upper bound, so is the multiplier."""
    rows = []
    reference = reference or reference_objective(bounds_of(front))
    if front.empty or reference is None:
        return pd.DataFrame(rows)
    for _, a in front[front["objective"] == reference].iterrows():
        for obj, fit in fits.items():
            if obj == reference:
                continue
            beta = -fit["b"]
            if not beta < 0:
                continue
            ln_l = math.log(a["bpb_mean"])
            xp = fit["xm"] + (ln_l - fit["alpha_c"]) / beta
            var_ref = (a["bpb_se"] / a["bpb_mean"]) ** 2 if a["bpb_se"] == a["bpb_se"] else 0.0
            var = ((fit["alpha_c_se"] ** 2 + var_ref) / beta ** 2
                   + ((ln_l - fit["alpha_c"]) / beta ** 2) ** 2 * fit["b_se"] ** 2)
            half = fit["tq"] * math.sqrt(var) if var == var else math.nan
            lo_x, hi_x = fit["x_lo"], fit["x_hi"]
            how = ("interpolated" if lo_x <= xp <= hi_x else "extrapolated"
                   if lo_x - math.log(EXTRAPOLATE) <= xp <= hi_x + math.log(EXTRAPOLATE) else "far outside")
            c = math.log(a["flops"])
            rows.append({"budget": a["cgroup"], "objective": obj, "reference": reference,
                         "ref_bpb": a["bpb_mean"],
                         "flops_needed": math.exp(xp), "multiplier": math.exp(xp - c),
                         "multiplier_lo": math.exp(xp - half - c) if half == half else math.nan,
                         "multiplier_hi": math.exp(xp + half - c) if half == half else math.nan,
                         "how": how})
    return pd.DataFrame(rows)
