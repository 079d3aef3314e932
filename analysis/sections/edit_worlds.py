"""Code-edit latency in both worlds: measured on this machine, projected on an accelerator.

``eval=edits`` records, per edit, the forwards its decode made (``work``: the sampler's
``forward_plan`` with each pass's FLOPs and bytes). :mod:`analysis.roofline` turns them into
the latency the same decode would take on named hardware (datasheet peaks, stated
efficiencies: ``conf/hardware/*.yaml``). This part draws the median latency per diff-size bin
measured and projected side by side, and tabulates, per hardware, each series' median latency
per bin and its ratio to the fastest exact-likelihood (AR) series in that bin. Rows recorded
before ``work`` existed are left out and counted, never guessed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import roofline
from analysis.errors import ReportError
from analysis.plotting import plain_log_ticks, plt, save_figure

PROJECTED = ("h200",)


def project(lat: pd.DataFrame, name: str) -> pd.Series:
    """Predicted seconds per edit on hardware ``name`` (NaN where a row has no ``work``)."""
    hw = roofline.load_hardware(name)
    if hw.measured:
        raise ReportError(f"hardware={name} is measured on a benchmark's probe; pick a datasheet one")
    out = []
    for _, r in lat.iterrows():
        w = r.get("work")
        ok = isinstance(w, dict) and w.get("passes") and "n_layers" in w
        row = {"work": w, "dtype": r.get("dtype") or "float32"}
        out.append(roofline.predict(row, hw) if ok else math.nan)
    return pd.Series(out, index=lat.index, dtype=float)


def _name(hardware: str) -> str:
    return roofline.load_hardware(hardware).label.replace(" (projected)", "")


def _medians(lat: pd.DataFrame, col: str, bins: list[str]) -> dict[str, list[float]]:
    out = {}
    for series, g in lat.groupby("series", sort=True):
        out[series] = [float(g[g["bin"] == b][col].median()) if (g["bin"] == b).any() else math.nan
                       for b in bins]
    return out


def section_lines(lat: pd.DataFrame, bins: list[str], out: Path, style) -> tuple[list[str], list[str]]:
    """(lines, figure files) of the both-worlds part; ``style(objective, i) -> dict`` of plot kwargs."""
    if lat.empty or "work" not in lat:
        return [], []
    has = lat["work"].map(lambda w: isinstance(w, dict) and bool(w.get("passes")))
    if not has.any():
        return ["", "_Code-edit latency projected on accelerators: no per-edit `work` recorded (evaluated "
                "before it was; rerun `python -m sandbox.evaluate eval=edits`)._", ""], []
    lat = lat[has].copy()
    for name in PROJECTED:
        lat[f"latency_{name}"] = project(lat, name)
    cols = [("latency_s", "measured here")]
    cols += [(f"latency_{n}", f"projected on {_name(n)}") for n in PROJECTED]
    xs = np.arange(len(bins))
    fig, axes = plt.subplots(1, len(cols), figsize=(6 * len(cols), 4.5), squeeze=False)
    objective = lat.groupby("series")["objective"].first()
    for ax, (col, title) in zip(axes[0], cols):
        for i, (series, vals) in enumerate(_medians(lat, col, bins).items()):
            ax.plot(xs, [1e3 * v for v in vals], label=series, **style(objective[series], i))
        ax.set_xticks(xs, bins)
        ax.set(xlabel="changed tokens", ylabel="latency per edit (ms, median)", yscale="log",
               title=f"Code-edit latency vs diff size\n{title}")
        plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=6)
    files = [save_figure(fig, out, "edits_latency_both_worlds.png")]
    skipped = int((~has).sum())
    lines = ["", "Code-edit latency in both worlds: median ms per edit by diff size, measured here and "
             "projected on " + ", ".join(_name(n) for n in PROJECTED) + " by the "
             "roofline model from each edit's recorded forwards (`analysis/roofline.py`; the ratio is to the "
             "fastest exact-likelihood series in the bin, < 1: faster)."
             + (f" {skipped} latency rows without recorded work are left out." if skipped else ""), "",
             "| series | hardware | " + " | ".join(bins) + " |", "|---|---|" + "---:|" * len(bins)]
    exact = set(lat[lat["bound"] == "exact"]["series"])
    for col, title in cols:
        med = _medians(lat, col, bins)
        ref = [min((med[s][j] for s in exact if s in med and med[s][j] == med[s][j]), default=math.nan)
               for j in range(len(bins))]
        for series, vals in med.items():
            cells = []
            for v, r in zip(vals, ref):
                if v != v:
                    cells.append("–")
                else:
                    ratio = f" ({v / r:.2f}x)" if r == r and series not in exact else ""
                    cells.append(f"{1e3 * v:,.1f}{ratio}")
            lines.append(f"| {series} | {title} | " + " | ".join(cells) + " |")
    return lines + [""], files
