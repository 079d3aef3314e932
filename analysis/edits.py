"""Code-edit benchmark results (issue #4): exact match and latency against diff size.

Reads ``<run>/eval_edits*.jsonl``, written by ``python -m sandbox.evaluate eval=edits`` (one
file per run, or one per format / sampler: every file matching the glob is read). Never
evaluates anything. Expected lines (JSON objects; other kinds and torn lines are skipped):

**Summary**, one per (run, format, sampler setting)::

    {"kind": "edits", "run": "runs/edits/ar", "objective": "ar", "model": "tiny",
     "format": "whole",  # whole | udiff | inplace | inplace_oracle_length | inplace_oracle_positions
     "sampler": "ar", "settings": {"temperature": 0.0}, "split": "test", "n": 1400,
     "metrics": {"exact_match": 0.42, "ast_match": 0.45, "parse_rate": 0.97, "apply_rate": 1.0,
                 "changed_line_precision": 0.81, "changed_line_recall": 0.74, "noop_rate": 0.05},
     "by_kind": {"rename": {"n": 200, "exact_match": 0.61, ...}, "swap_op": {...}, ...},
     "by_diff_size": {"1": {"n": 300, "exact_match": 0.7, "latency_s": 0.05}, "2-4": {...},
                      "5-16": {...}, "17+": {...}},       # changed tokens; any metric key above
     "latency_s_per_edit": 0.08, "nfe_per_edit": 41.0,
     "baselines": {"copy": {"exact_match": 0.0, ...}, "oracle": {"exact_match": 1.0, ...}}}

``objective`` / ``model`` may be left out (they are read from the run's ``config.yaml``);
``by_kind``, ``by_diff_size``, ``baselines`` and the latency fields are optional.

**Latency**, one per timed edit (optional; drawn against diff size and function length)::

    {"kind": "edits_latency", "run": "runs/edits/ar", "format": "whole", "sampler": "ar",
     "settings": {...}, "edit_kind": "rename", "diff_tokens": 3, "function_bytes": 180,
     "latency_s": 0.05, "nfe": 41, "exact": true}

A latency row belongs to the summary of the same run, format, sampler and settings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import _section, load_config, objective_label, read_jsonl  # noqa: E402
from analysis.scaling import objective_color, plain_log_ticks  # noqa: E402

DIFF_BINS = ("1", "2-4", "5-16", "17+")
LATENCY_FIELDS = ("edit_kind", "diff_tokens", "function_bytes", "latency_s", "nfe", "exact")
METRICS = ("exact_match", "ast_match", "parse_rate", "apply_rate", "changed_line_precision",
           "changed_line_recall", "noop_rate")


def diff_bin(tokens) -> str | None:
    """The diff-size bin of a number of changed tokens (1, 2-4, 5-16, 17+)."""
    try:
        t = int(tokens)
    except (TypeError, ValueError):
        return None
    if t < 1:
        return None
    return "1" if t == 1 else "2-4" if t <= 4 else "5-16" if t <= 16 else "17+"


def _settings_key(settings) -> str:
    return json.dumps(settings, sort_keys=True) if isinstance(settings, dict) else str(settings or "")


def _settings_text(settings) -> str:
    if not isinstance(settings, dict):
        return str(settings or "")
    return " ".join(f"{k}={settings[k]}" for k in sorted(settings))


def load_edits(runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summaries, latency rows) of every ``eval_edits*.jsonl`` of the runs.

    Summaries: one row per summary line with ``series`` (a label), ``em`` (overall exact
    match), ``em_<bin>`` and ``lat_<bin>`` per diff-size bin, ``by_kind`` / ``baselines`` dicts.
    Latency rows: one per ``edits_latency`` line with ``series`` and ``bin``."""
    summ, lat = [], []
    for run in runs:
        run = Path(run)
        files = sorted(run.glob("eval_edits*.jsonl"))
        if not files:
            continue
        cfg = load_config(run)
        label, _ = objective_label(cfg)
        model = _section(cfg, "model").get("name")
        for f in files:
            for rec in read_jsonl(f):
                kind = rec.get("kind")
                base = {"run": str(run), "run_name": run.name, "file": f.name,
                        "objective": rec.get("objective") or label, "model": rec.get("model") or model,
                        "format": rec.get("format") or "?", "sampler": rec.get("sampler") or "?",
                        "settings_key": _settings_key(rec.get("settings")),
                        "settings_text": _settings_text(rec.get("settings"))}
                base["series"] = (f"{base['objective']}/{base['model']} {base['format']} {base['sampler']}"
                                  + (f" {base['settings_text']}" if base["settings_text"] else ""))
                if kind == "edits":
                    m = rec.get("metrics") or {}
                    row = {**base, "n": rec.get("n"), "em": m.get("exact_match"),
                           **{k: m.get(k) for k in METRICS},
                           "latency_s": rec.get("latency_s_per_edit"), "nfe": rec.get("nfe_per_edit"),
                           "by_kind": rec.get("by_kind") or {}, "baselines": rec.get("baselines") or {}}
                    bins = rec.get("by_diff_size") or {}
                    for b in DIFF_BINS:
                        row[f"em_{b}"] = (bins.get(b) or {}).get("exact_match")
                        row[f"lat_{b}"] = (bins.get(b) or {}).get("latency_s")
                        row[f"n_{b}"] = (bins.get(b) or {}).get("n")
                    summ.append(row)
                elif kind == "edits_latency":
                    lat.append({**base, **{k: rec.get(k) for k in LATENCY_FIELDS},
                                "bin": diff_bin(rec.get("diff_tokens"))})
    s, latency = pd.DataFrame(summ), pd.DataFrame(lat)
    if not s.empty:
        s = s.sort_values(["series", "file"], kind="mergesort").reset_index(drop=True)
    if not latency.empty:
        latency = latency.sort_values(["series", "diff_tokens"], kind="mergesort").reset_index(drop=True)
    return s, latency


def _num(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


def _p(x) -> str:
    x = _num(x)
    return "–" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _ms(x) -> str:
    x = _num(x)
    return "–" if not math.isfinite(x) else f"{1e3 * x:,.1f}"


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out) / name, dpi=110)
    plt.close(fig)
    return name


def _style(series: str, objective: str, i: int) -> dict:
    return {"color": objective_color(str(objective)), "marker": "osD^v<>"[i % 7],
            "ls": ["-", "--", ":", "-."][i % 4]}


def _bin_latency(s: pd.DataFrame, lat: pd.DataFrame) -> dict[str, list[float]]:
    """series -> median latency per diff bin: from the latency rows, else the summaries."""
    out = {}
    for _, r in s.iterrows():
        li = lat[lat["series"] == r["series"]] if not lat.empty else lat
        if len(li):
            out[r["series"]] = [float(li[li["bin"] == b]["latency_s"].astype(float).median())
                                if (li["bin"] == b).any() else math.nan for b in DIFF_BINS]
        else:
            out[r["series"]] = [_num(r[f"lat_{b}"]) for b in DIFF_BINS]
    return out


def plot_edits(s: pd.DataFrame, lat: pd.DataFrame, out: Path) -> list[str]:
    files = []
    xs = np.arange(len(DIFF_BINS))
    # exact match and latency per diff-size bin
    lat_bins = _bin_latency(s, lat)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (_, r) in enumerate(s.iterrows()):
        st = _style(r["series"], r["objective"], i)
        em = [_num(r[f"em_{b}"]) for b in DIFF_BINS]
        axes[0].plot(xs, em, label=r["series"], **st)
        axes[1].plot(xs, [1e3 * v for v in lat_bins[r["series"]]], label=r["series"], **st)
    for ax, ylab, title in ((axes[0], "exact match", "Exact match vs diff size"),
                            (axes[1], "latency per edit (ms, median)", "Latency vs diff size")):
        ax.set_xticks(xs, DIFF_BINS)
        ax.set(xlabel="changed tokens", ylabel=ylab, title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_yscale("log")
    plain_log_ticks(axes[1], "y")
    axes[0].legend(fontsize=6)
    files.append(_save(fig, out, "edits_vs_diff_size.png"))
    # latency vs function length (latency rows only)
    if not lat.empty and lat["function_bytes"].notna().any():
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, (series, g) in enumerate(lat.groupby("series", sort=True)):
            st = _style(series, g["objective"].iloc[0], i)
            ax.scatter(g["function_bytes"].astype(float), 1e3 * g["latency_s"].astype(float), s=8, alpha=0.5,
                       color=st["color"], marker=st["marker"], label=series)
        ax.set(xlabel="function length (bytes)", ylabel="latency per edit (ms)", yscale="log",
               title="Latency vs function length")
        plain_log_ticks(ax, "y")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        files.append(_save(fig, out, "edits_latency_vs_function_length.png"))
    # exact match by edit kind
    kinds = sorted({k for d in s["by_kind"] for k in d})
    if kinds:
        fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(kinds) + 3), 4.5))
        w = 0.8 / max(len(s), 1)
        for i, (_, r) in enumerate(s.iterrows()):
            vals = [_num((r["by_kind"].get(k) or {}).get("exact_match")) for k in kinds]
            ax.bar(np.arange(len(kinds)) + (i - (len(s) - 1) / 2) * w, vals, width=w, label=r["series"],
                   color=objective_color(str(r["objective"])), alpha=0.4 + 0.6 * (i + 1) / len(s),
                   edgecolor="k", lw=0.3)
        ax.set_xticks(np.arange(len(kinds)), kinds, rotation=20, fontsize=8)
        ax.set(ylabel="exact match", ylim=(0, 1), title="Exact match by edit kind")
        ax.legend(fontsize=6)
        files.append(_save(fig, out, "edits_exact_by_kind.png"))
    # exact match vs latency
    pts = [(r, _num(r["latency_s"]), _num(r["em"])) for _, r in s.iterrows()]
    pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, (r, x, y) in enumerate(pts):
            st = _style(r["series"], r["objective"], i)
            ax.scatter([1e3 * x], [y], color=st["color"], marker=st["marker"], label=r["series"])
        ax.set(xscale="log", xlabel="latency per edit (ms)", ylabel="exact match", ylim=(-0.02, 1.02),
               title="Exact match vs latency")
        plain_log_ticks(ax, "x")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
        files.append(_save(fig, out, "edits_exact_vs_latency.png"))
    return files


def latency_ratio(s: pd.DataFrame, lat: pd.DataFrame) -> list[str]:
    """Markdown rows: for each diffusion series, its median latency per diff-size bin over the
    AR series it competes with: AR of the same output format (``whole`` for diffusion's
    ``inplace_*`` oracle canvases), the one with the highest exact match when there are
    several. Each cell carries both exact matches, since the ratio means most at equal ones."""
    is_ar = s["objective"].astype(str).str.lower().str.startswith("ar")
    if not is_ar.any() or is_ar.all():
        return []
    lb = _bin_latency(s, lat)
    ar = s[is_ar]
    rows = ["", "Latency ratio diffusion / AR per diff size (median ms per edit; exact match diffusion / AR "
            "in brackets). Below 1: diffusion is faster. Oracle canvases read the gold answer (upper bound).",
            "",
            "| diffusion | AR | " + " | ".join(f"{b} changed" for b in DIFF_BINS) + " |",
            "|---|---|" + "---:|" * len(DIFF_BINS)]
    for _, d in s[~is_ar].iterrows():
        fmt = "whole" if str(d["format"]).startswith("inplace") else d["format"]
        same = ar[ar["format"] == fmt]
        if same.empty:
            continue
        a = same.loc[same["em"].astype(float).fillna(-1).idxmax()]
        cells = []
        for i, b in enumerate(DIFF_BINS):
            dl, al = lb[d["series"]][i], lb[a["series"]][i]
            ok = math.isfinite(dl) and math.isfinite(al) and al > 0
            cells.append(f"{dl / al:.2f} ({_p(d[f'em_{b}'])} / {_p(a[f'em_{b}'])})" if ok else "–")
        rows.append(f"| {d['series']} | {a['series']} | " + " | ".join(cells) + " |")
    return rows if len(rows) > 5 else []


def section_edits(df, out: Path, ctx: dict) -> str:
    head = "## Code edits: exact match and latency vs diff size (`sandbox.evaluate eval=edits`)\n\n"
    s, lat = load_edits(ctx["runs"])
    if s.empty:
        extra = (f" ({len(lat)} latency rows without a summary line were found.)" if not lat.empty else "")
        return head + ("_No code-edit evaluations in these runs (no `eval_edits*.jsonl` with `kind: edits` "
                       "lines): train on `data=stdlib_edits` and run `python -m sandbox.evaluate eval=edits "
                       f"run_dir=<run>`; the expected format is in `analysis/edits.py`._{extra}\n")
    files = plot_edits(s, lat, out)
    lines = [head.rstrip(), "",
             "One row per (run, output format, sampler setting) on the frozen test set; exact match is "
             "the primary metric. Diff size = changed tokens. Latency: mean per edit (table), median per "
             "bin (figure).", "",
             "| series | n | exact match | AST match | parses | patch applies | no-op | "
             + " | ".join(f"EM {b}" for b in DIFF_BINS) + " | ms/edit | NFE/edit |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(DIFF_BINS) + "---:|---:|"]
    for _, r in s.iterrows():
        n = r["n"] if r["n"] == r["n"] and r["n"] is not None else "–"
        lines.append(f"| {r['series']} | {n} | {_p(r['em'])} | {_p(r['ast_match'])} | "
                     f"{_p(r['parse_rate'])} | {_p(r['apply_rate'])} | {_p(r['noop_rate'])} | "
                     + " | ".join(_p(r[f"em_{b}"]) for b in DIFF_BINS)
                     + f" | {_ms(r['latency_s'])} | {_num(r['nfe']):.1f} |".replace("nan", "–"))
    lines += latency_ratio(s, lat)
    base = [(r["series"], k, v) for _, r in s.iterrows() for k, v in sorted(r["baselines"].items())
            if isinstance(v, dict)]
    if base:
        lines += ["", "Baselines on the same items:", "", "| series | baseline | exact match | AST match |",
                  "|---|---|---:|---:|"]
        lines += [f"| {sr} | {k} | {_p(v.get('exact_match'))} | {_p(v.get('ast_match'))} |"
                  for sr, k, v in base]
    lines += ["", "\n\n".join(f"![{f}]({f})" for f in files), ""]
    if lat.empty:
        lines += ["_No per-edit latency rows (`kind: edits_latency`): latency by bin comes from the "
                  "summaries, and latency vs function length is not drawn._", ""]
    return "\n".join(lines) + "\n"
