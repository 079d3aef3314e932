"""Code edits: exact match and latency against diff size, from ``<run>/eval_edits*.jsonl``
(read by :mod:`analysis.edits`, which documents the expected lines).

One table row per (run, output format, sampler setting), the diff-size bins as the evaluator
wrote them, figures of exact match and latency per bin, by function length and by edit kind,
and each other series' latency over the exact-likelihood series of the same output format
(the series of a run whose bound is ``exact``; no objective is recognised by its name).

Latency at matched exact match (:func:`analysis.edits.matched_latency`): each diffusion series
against each exact-likelihood series of any format, on the items both got exactly right, per
diff-size bin (n, both medians, their ratio), the crossover diff size per pair in a column and
one sentence, and ``edits_matched_latency.png``. With no item solved by both it is one italic
line; latency rows without an item ``id`` (older files) are skipped with a note.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.context import Context
from analysis.edits import MIN_MATCHED, crossover, diff_bins, load_edits, matched_latency
from analysis.formatting import fixed, ms, num, pct
from analysis.plotting import color_of, plain_log_ticks, plt, save_figure
from analysis.sections import edit_worlds, gap, images

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
            "format (median ms per edit over all items, right or wrong; exact match of both in brackets). "
            "Below 1: faster than that series. Oracle canvases read the gold answer (upper bound).", "",
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


def _pair_label(r, side: str) -> str:
    return r[f"{side}_series"] + (" (oracle)" if r[f"{side}_oracle"] else "")


def _matched_cell(r) -> str:
    if not r["n"]:
        return "–"
    few = ", too few" if r["n"] < MIN_MATCHED else ""
    return f"{fixed(r['ratio'], 2)} ({ms(r['d_latency_s'])} / {ms(r['a_latency_s'])} ms, n={r['n']}{few})"


def _crossover_text(c: dict) -> tuple[str, str]:
    """(table cell, sentence) for :func:`analysis.edits.crossover`'s answer."""
    if not c["bins"]:
        return "too few items", f"too few items solved by both to say (under {MIN_MATCHED} in every bin)."
    few = f"; under {MIN_MATCHED} items in {', '.join(c['few'])}, not counted" if c["few"] else ""
    counted = f" (bins counted: {', '.join(c['bins'])}{few})."
    if c["bin"] is None:
        return "never in these bins", "not faster in the largest bin counted: never in these bins" + counted
    return f"from {c['bin']}", f"faster from {c['bin']} changed tokens up" + counted


def plot_matched(m: pd.DataFrame, bins: list[str], out: Path, colors: dict) -> str:
    """One panel per pair: median latency per bin on the matched items, diffusion solid, other dashed."""
    pairs = list(m.groupby(["d_series", "a_series"], sort=False))
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False, sharey=True)
    xs = np.arange(len(bins))
    for ax, (_, g) in zip(axes.flat, pairs):
        r = g.iloc[0]
        for side, ls in (("d", "-"), ("a", "--")):
            ax.plot(xs, 1e3 * g[f"{side}_latency_s"].astype(float), ls=ls, marker="o",
                    color=color_of(colors, r[f"{side}_objective"]), label=_pair_label(r, side))
        for x, (_, b) in zip(xs, g.iterrows()):
            if b["n"]:
                ax.annotate(f"n={b['n']}", (x, 1e3 * b["d_latency_s"]), textcoords="offset points",
                            xytext=(0, 6), fontsize=6, ha="center")
        ax.set_xticks(xs, bins)
        ax.set(xlabel="changed tokens", yscale="log")
        plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("median ms per edit (items both got right)")
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle("Latency at matched exact match", fontsize=10)
    return save_figure(fig, out, "edits_matched_latency.png")


def matched_table(lat: pd.DataFrame, bins: list[str], out: Path, colors: dict) -> tuple[list[str], list[str]]:
    """(Markdown lines, figure files): latency of each diffusion series against each
    exact-likelihood series on the items both got exactly right, per diff-size bin."""
    bounds = set(lat["bound"].dropna()) if not lat.empty else set()
    if "exact" not in bounds or not bounds - {"exact"}:
        return [], []
    m, skipped = matched_latency(lat, bins)
    lines = []
    if skipped:
        lines += ["", f"_{skipped} latency rows without an item `id` (files written before ids were "
                      "recorded) are left out of the comparison at matched exact match._"]
    if m.empty:
        return lines, []
    solved = m.groupby(["d_series", "a_series"], sort=False)["n"].transform("sum") > 0
    if not solved.any():
        return lines + ["", "_Latency cannot be compared at matched exact match: no test item was solved "
                            "exactly by both a diffusion and an exact-likelihood series._"], []
    lines += ["", "Latency at matched exact match: each diffusion series against each exact-likelihood "
              "series of any format, on the test items both got exactly right (joined on item id). Per "
              "diff size: ratio of the median ms per edit (diffusion / exact-likelihood, both in brackets) "
              f"and n, the items both got right. Below 1: diffusion faster. Bins with under {MIN_MATCHED} "
              "items are marked and not counted for the crossover (the smallest diff size from which "
              "diffusion is faster in every larger bin). Oracle series read the gold answer (upper bound).",
              "",
              "| diffusion series | exact-likelihood series | " + " | ".join(f"{b} changed" for b in bins)
              + " | diffusion faster |", "|---|---|" + "---:|" * len(bins) + "---|"]
    sentences = []
    for _, g in m[solved].groupby(["d_series", "a_series"], sort=False):
        r = g.iloc[0]
        cell, sentence = _crossover_text(crossover(g))
        d, a = _pair_label(r, "d"), _pair_label(r, "a")
        cells = " | ".join(_matched_cell(b) for _, b in g.iterrows())
        lines.append(f"| {d} | {a} | {cells} | {cell} |")
        sentences.append(f"- {d} against {a}: {sentence}")
    unsolved = m[~solved].drop_duplicates(["d_series", "a_series"])
    if len(unsolved):
        sentences.append("- No item solved by both: " + "; ".join(
            f"{_pair_label(r, 'd')} against {_pair_label(r, 'a')}" for _, r in unsolved.iterrows()) + ".")
    return lines + [""] + sentences, [plot_matched(m[solved], bins, out, colors)]


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
    matched, matched_files = matched_table(lat, bins, ctx.out, ctx.colors)
    lines += matched
    files += matched_files
    worlds, worlds_files = edit_worlds.section_lines(lat, bins, ctx.out,
                                                     lambda o, i: _style(o, i, ctx.colors))
    lines += worlds
    files += worlds_files
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
