"""Code edits: exact match and latency against diff size, from ``<run>/eval_edits*.jsonl``
(read by :mod:`analysis.edits`, which documents the expected lines).

One table row per (run, output format, sampler setting), the diff-size bins as the evaluator
wrote them, figures of exact match and latency per bin, by function length and by edit kind,
and each other series' latency over the exact-likelihood series of the same output format
(the series of a run whose bound is ``exact``; no objective is recognised by its name).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.context import Context
from analysis.edits import diff_bins, load_edits
from analysis.formatting import fixed, ms, num, pct
from analysis.plotting import color_of, plain_log_ticks, plt, save_figure
from analysis.sections import gap, images

HEADING = "## Code edits: exact match and latency vs diff size (`sandbox.evaluate eval=edits`)"


def _style(objective, i: int, colors: dict) -> dict:
    return {"color": color_of(colors, objective), "marker": "osD^v<>"[i % 7],
            "ls": ["-", "--", ":", "-."][i % 4]}


def _bin_latency(s: pd.DataFrame, lat: pd.DataFrame, bins: list[str]) -> dict[str, list[float]]:
    """series -> median latency per diff bin: from the latency rows, else the summaries."""
    out = {}
    for _, r in s.iterrows():
        li = lat[lat["series"] == r["series"]] if not lat.empty else lat
        if len(li):
            out[r["series"]] = [float(li[li["bin"] == b]["latency_s"].astype(float).median())
                                if (li["bin"] == b).any() else math.nan for b in bins]
        else:
            out[r["series"]] = [num(r.get(f"lat_{b}")) for b in bins]
    return out


def plot_edits(s: pd.DataFrame, lat: pd.DataFrame, bins: list[str], out: Path, colors: dict) -> list[str]:
    files = []
    xs = np.arange(len(bins))
    # exact match and latency per diff-size bin
    lat_bins = _bin_latency(s, lat, bins)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (_, r) in enumerate(s.iterrows()):
        st = _style(r["objective"], i, colors)
        axes[0].plot(xs, [num(r.get(f"em_{b}")) for b in bins], label=r["series"], **st)
        axes[1].plot(xs, [1e3 * v for v in lat_bins[r["series"]]], label=r["series"], **st)
    for ax, ylab, title in ((axes[0], "exact match", "Exact match vs diff size"),
                            (axes[1], "latency per edit (ms, median)", "Latency vs diff size")):
        ax.set_xticks(xs, bins)
        ax.set(xlabel="changed tokens", ylabel=ylab, title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_yscale("log")
    plain_log_ticks(axes[1], "y")
    axes[0].legend(fontsize=6)
    files.append(save_figure(fig, out, "edits_vs_diff_size.png"))
    # latency vs function length (latency rows only)
    if not lat.empty and lat["function_bytes"].notna().any():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, (series, g) in enumerate(lat.groupby("series", sort=True)):
            st = _style(g["objective"].iloc[0], i, colors)
            ax.scatter(g["function_bytes"].astype(float), 1e3 * g["latency_s"].astype(float), s=8, alpha=0.5,
                       color=st["color"], marker=st["marker"], label=series)
        ax.set(xlabel="function length (bytes)", ylabel="latency per edit (ms)", yscale="log",
               title="Latency vs function length")
        plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        files.append(save_figure(fig, out, "edits_latency_vs_function_length.png"))
    # exact match by edit kind
    kinds = sorted({k for d in s["by_kind"] for k in d})
    if kinds:
        fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(kinds) + 3), 4.5))
        w = 0.8 / max(len(s), 1)
        for i, (_, r) in enumerate(s.iterrows()):
            vals = [num((r["by_kind"].get(k) or {}).get("exact_match")) for k in kinds]
            ax.bar(np.arange(len(kinds)) + (i - (len(s) - 1) / 2) * w, vals, width=w, label=r["series"],
                   color=color_of(colors, r["objective"]), alpha=0.4 + 0.6 * (i + 1) / len(s),
                   edgecolor="k", lw=0.3)
        ax.set_xticks(np.arange(len(kinds)), kinds, rotation=20, fontsize=8)
        ax.set(ylabel="exact match", ylim=(0, 1), title="Exact match by edit kind")
        ax.legend(fontsize=6)
        files.append(save_figure(fig, out, "edits_exact_by_kind.png"))
    # exact match vs latency
    pts = [(r, num(r["latency_s"]), num(r["em"])) for _, r in s.iterrows()]
    pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, (r, x, y) in enumerate(pts):
            st = _style(r["objective"], i, colors)
            ax.scatter([1e3 * x], [y], color=st["color"], marker=st["marker"], label=r["series"])
        ax.set(xscale="log", xlabel="latency per edit (ms)", ylabel="exact match", ylim=(-0.02, 1.02),
               title="Exact match vs latency")
        plain_log_ticks(ax, "x")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
        files.append(save_figure(fig, out, "edits_exact_vs_latency.png"))
    return files


def latency_ratio(s: pd.DataFrame, lat: pd.DataFrame, bins: list[str]) -> list[str]:
    """Markdown rows: for each series of a run without an exact likelihood, its median latency
    per diff-size bin over the exact-likelihood series it competes with: the same output format
    (``whole`` for the ``inplace_*`` oracle canvases), the one with the highest exact match when
    there are several. Each cell carries both exact matches, since the ratio means most at equal
    ones."""
    exact = s["bound"] == "exact"
    other = s["bound"].notna() & ~exact
    if not exact.any() or not other.any():
        return []
    lb = _bin_latency(s, lat, bins)
    ref = s[exact]
    rows = ["", "Latency ratio per diff size of each series to the exact-likelihood series of the same "
            "format (median ms per edit; exact match of both in brackets). Below 1: faster than that "
            "series. Oracle canvases read the gold answer (upper bound).", "",
            "| series | exact-likelihood series | " + " | ".join(f"{b} changed" for b in bins) + " |",
            "|---|---|" + "---:|" * len(bins)]
    for _, d in s[other].iterrows():
        fmt = "whole" if str(d["format"]).startswith("inplace") else d["format"]
        same = ref[ref["format"] == fmt]
        if same.empty:
            continue
        a = same.loc[same["em"].astype(float).fillna(-1).idxmax()]
        cells = []
        for i, b in enumerate(bins):
            dl, al = lb[d["series"]][i], lb[a["series"]][i]
            ok = math.isfinite(dl) and math.isfinite(al) and al > 0
            cells.append(f"{dl / al:.2f} ({pct(d.get(f'em_{b}'))} / {pct(a.get(f'em_{b}'))})" if ok else "–")
        rows.append(f"| {d['series']} | {a['series']} | " + " | ".join(cells) + " |")
    return rows if len(rows) > 5 else []


def section(ctx: Context) -> str:
    s, lat = load_edits(ctx.runs)
    if s.empty:
        extra = f" ({len(lat)} latency rows without a summary line were found.)" if not lat.empty else ""
        return gap(HEADING, "No code-edit evaluations in these runs (no `eval_edits*.jsonl` with "
                            "`kind: edits` lines): run `python -m sandbox.evaluate eval=edits "
                            f"run_dir=<run>`.{extra}")
    bins = diff_bins(s)
    files = plot_edits(s, lat, bins, ctx.out, ctx.colors)
    lines = [HEADING, "",
             "One row per (run, output format, sampler setting) on the frozen test set; exact match is "
             "the primary metric. Diff size = changed tokens. Latency: mean per edit (table), median per "
             "bin (figure).", "",
             "| series | n | exact match | AST match | parses | patch applies | no-op | "
             + " | ".join(f"EM {b}" for b in bins) + " | ms/edit | NFE/edit |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(bins) + "---:|---:|"]
    for _, r in s.iterrows():
        n = r["n"] if r["n"] == r["n"] and r["n"] is not None else "–"
        lines.append(f"| {r['series']} | {n} | {pct(r['em'])} | {pct(r['ast_match'])} | "
                     f"{pct(r['parse_rate'])} | {pct(r['apply_rate'])} | {pct(r['noop_rate'])} | "
                     + " | ".join(pct(r.get(f"em_{b}")) for b in bins)
                     + f" | {ms(r['latency_s'])} | {fixed(num(r['nfe']), 1)} |")
    lines += latency_ratio(s, lat, bins)
    base = [(r["series"], k, v) for _, r in s.iterrows() for k, v in sorted(r["baselines"].items())
            if isinstance(v, dict)]
    if base:
        lines += ["", "Baselines on the same items:", "", "| series | baseline | exact match | AST match |",
                  "|---|---|---:|---:|"]
        lines += [f"| {sr} | {k} | {pct(v.get('exact_match'))} | {pct(v.get('ast_match'))} |"
                  for sr, k, v in base]
    lines += ["", images(files), ""]
    if lat.empty:
        lines += ["_No per-edit latency rows (`kind: edits_latency`): latency by bin comes from the "
                  "summaries, and latency vs function length is not drawn._", ""]
    return "\n".join(lines) + "\n"
