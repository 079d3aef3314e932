"""Code-edit benchmark results: read ``<run>/eval_edits*.jsonl`` into tables.

Written by ``python -m sandbox.evaluate eval=edits`` (one file per run, or one per format /
sampler: every file matching the glob is read). Never evaluates anything; the report section
is :mod:`analysis.sections.edits`. Expected lines (JSON objects; other kinds and torn lines are
skipped):

**Summary**, one per (run, format, sampler setting)::

    {"kind": "edits", "run": "runs/edits/ar", "objective": "ar", "model": "tiny",
     "format": "whole",  # AR: whole | udiff | search_replace; whole-canvas diffusion: whole |
                         # inplace_oracle_length | inplace_oracle_positions; edit-native diffusion:
                         # native | native_oracle_lines (oracle formats: :func:`is_oracle`)
     "sampler": "ar", "settings": {"temperature": 0.0}, "split": "test", "n": 1400,
     "metrics": {"exact_match": 0.42, "ast_match": 0.45, "parse_rate": 0.97, "apply_rate": 1.0,
                 "changed_line_precision": 0.81, "changed_line_recall": 0.74, "noop_rate": 0.05},
     "by_kind": {"rename": {"n": 200, "exact_match": 0.61, ...}, "swap_op": {...}, ...},
     "diff_bins": ["1", "2-4", "5-16", "17+"],              # the bins of by_diff_size, in order
     "by_diff_size": {"1": {"n": 300, "exact_match": 0.7, "latency_s": 0.05}, "2-4": {...},
                      "5-16": {...}, "17+": {...}},       # changed tokens; any metric key above
     "latency_s_per_edit": 0.08, "nfe_per_edit": 41.0,
     "baselines": {"copy": {"exact_match": 0.0, ...}, "oracle": {"exact_match": 1.0, ...}}}

``objective`` / ``model`` may be left out (the run's own files name them: its objective label
and bound come from ``metrics.jsonl``, as everywhere in the report); ``by_kind``,
``by_diff_size``, ``baselines`` and the latency fields are optional.

**Latency**, one per timed edit (optional; drawn against diff size and function length)::

    {"kind": "edits_latency", "run": "runs/edits/ar", "format": "whole", "sampler": "ar",
     "settings": {...}, "id": "rename-0042", "edit_kind": "rename", "diff_tokens": 3,
     "diff_bin": "2-4", "function_bytes": 180, "latency_s": 0.05, "nfe": 41, "exact": true}

A latency row belongs to the summary of the same run, format, sampler and settings. ``id`` names
the test item (the same item has the same id in every run and format); older files lack it.

**Latency at matched exact match** (:func:`matched_latency`): each series of a run whose bound
is not ``exact`` (diffusion) against each series of a run whose bound is ``exact`` (AR), of any
format, on the items both got exactly right (latency rows joined on ``id``; rows without one
are skipped and counted). :func:`crossover` finds the smallest diff-size bin from which the
diffusion series is faster in that bin and every larger one with enough items.

**Exact match during training** (read from ``metrics.jsonl``, not from these files): a run
trained with ``data=stdlib_edits`` and ``data.em_items`` > 0 adds to each of its eval records
(``sandbox.tasks.edits.learning``)::

    {"kind": "eval", "step": 500, "tokens": 512000, "val_bpb": 1.9, ...,
     "val_edit_em": 0.25, "val_edit_items": 32, "val_edit_em_rename": 0.4, ...,   # per edit kind
     "val_edit_s": 3.1, "val_edit_nfe": 60.0}   # seconds and model calls of the decoding

:func:`edit_curves` selects those records; runs without ``val_edit_em`` are left out.

**Diff-size bins are the evaluator's.** Summary lines name their bins (``diff_bins``) and
latency lines their bin (``diff_bin``); the report uses them as written. Files written before
those fields existed get the former fixed bins (:data:`LEGACY_DIFF_BINS`, :func:`legacy_diff_bin`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.labels import settings_text
from analysis.load import read_jsonl, run_identity

LATENCY_FIELDS = ("id", "edit_kind", "diff_tokens", "function_bytes", "latency_s", "nfe", "exact", "work",
                  "dtype")
METRICS = ("exact_match", "ast_match", "parse_rate", "apply_rate", "changed_line_precision",
           "changed_line_recall", "noop_rate")

# Fallback for files written before the evaluator recorded its bins (no "diff_bins" /
# "diff_bin" fields): the bins it used then.
LEGACY_DIFF_BINS = ("1", "2-4", "5-16", "17+")


def legacy_diff_bin(tokens) -> str | None:
    """Fallback for old files only: the bin (1, 2-4, 5-16, 17+) of a number of changed tokens."""
    try:
        t = int(tokens)
    except (TypeError, ValueError):
        return None
    if t < 1:
        return None
    return "1" if t == 1 else "2-4" if t <= 4 else "5-16" if t <= 16 else "17+"


def _settings_key(settings) -> str:
    return json.dumps(settings, sort_keys=True) if isinstance(settings, dict) else str(settings or "")


def _summary_bins(rec: dict) -> list[str]:
    bins = rec.get("diff_bins")
    return [str(b) for b in bins] if isinstance(bins, list) else list(LEGACY_DIFF_BINS)


def load_edits(runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summaries, latency rows) of every ``eval_edits*.jsonl`` of the runs.

    Summaries: one row per summary line with ``series`` (a label), ``bound`` (the run's),
    ``em`` (overall exact match), ``diff_bins`` (its bins, in order), ``em_<bin>``,
    ``lat_<bin>`` and ``n_<bin>`` per bin, ``by_kind`` / ``baselines`` dicts. Latency rows: one
    per ``edits_latency`` line with ``series``, ``bound`` and ``bin``."""
    summ, lat = [], []
    for run in runs:
        run = Path(run)
        files = sorted(run.glob("eval_edits*.jsonl"))
        if not files:
            continue
        ident = run_identity(run)
        for f in files:
            for rec in read_jsonl(f):
                kind = rec.get("kind")
                label = ident["label"] if ident["label"] != "?" else rec.get("objective") or "?"
                base = {"run": str(run), "run_name": run.name, "file": f.name, "objective": label,
                        "bound": ident["bound"], "model": rec.get("model") or ident["model"],
                        "format": rec.get("format") or "?", "sampler": rec.get("sampler") or "?",
                        "settings_key": _settings_key(rec.get("settings")),
                        "settings_text": settings_text(rec.get("settings"))}
                base["series"] = (f"{base['objective']}/{base['model']} {base['format']} {base['sampler']}"
                                  + (f" {base['settings_text']}" if base["settings_text"] else ""))
                if kind == "edits":
                    m = rec.get("metrics") or {}
                    bins = _summary_bins(rec)
                    by_bin = rec.get("by_diff_size") or {}
                    row = {**base, "n": rec.get("n"), "em": m.get("exact_match"),
                           **{k: m.get(k) for k in METRICS},
                           "latency_s": rec.get("latency_s_per_edit"), "nfe": rec.get("nfe_per_edit"),
                           "by_kind": rec.get("by_kind") or {}, "baselines": rec.get("baselines") or {},
                           "diff_bins": bins}
                    for b in bins:
                        row[f"em_{b}"] = (by_bin.get(b) or {}).get("exact_match")
                        row[f"lat_{b}"] = (by_bin.get(b) or {}).get("latency_s")
                        row[f"n_{b}"] = (by_bin.get(b) or {}).get("n")
                    summ.append(row)
                elif kind == "edits_latency":
                    b = rec.get("diff_bin")
                    lat.append({**base, **{k: rec.get(k) for k in LATENCY_FIELDS},
                                "bin": str(b) if b is not None else legacy_diff_bin(rec.get("diff_tokens"))})
    s, latency = pd.DataFrame(summ), pd.DataFrame(lat)
    if not s.empty:
        s = s.sort_values(["series", "file"], kind="mergesort").reset_index(drop=True)
    if not latency.empty:
        latency = latency.sort_values(["series", "diff_tokens"], kind="mergesort").reset_index(drop=True)
    return s, latency


def diff_bins(s: pd.DataFrame) -> list[str]:
    """The bins of every summary, in the order the summaries give them (first seen first)."""
    out: list[str] = []
    for bins in (s["diff_bins"] if not s.empty and "diff_bins" in s else []):
        out += [b for b in bins if b not in out]
    return out


def is_oracle(fmt) -> bool:
    """An oracle format reads the gold answer (where or how long the edit is): an upper bound."""
    return str(fmt).startswith("inplace_oracle") or str(fmt).endswith("_oracle_lines")


MIN_MATCHED = 5  # fewer items solved by both in a bin: too few to conclude from
MATCHED_COLUMNS = ("d_series", "a_series", "d_objective", "a_objective", "d_oracle", "a_oracle", "bin", "n",
                   "d_latency_s", "a_latency_s", "ratio")


def _median(x: pd.Series) -> float:
    return float(x.astype(float).median()) if len(x) else math.nan


def matched_latency(lat: pd.DataFrame, bins: list[str]) -> tuple[pd.DataFrame, int]:
    """(one row per (diffusion series, exact-likelihood series, bin), rows skipped for no ``id``).

    A diffusion series is one whose run's bound is known and not ``exact``. Per bin (the
    diffusion row's ``bin``): ``n`` items both series got exactly right, the median latency of
    each on those items (NaN when ``n`` is 0) and ``ratio`` = diffusion / exact-likelihood. An
    item evaluated twice in a series counts once, by its last line."""
    if lat.empty:
        return pd.DataFrame(columns=MATCHED_COLUMNS), 0
    has_id = lat["id"].notna()
    rows = lat[has_id & lat["bound"].notna()].assign(id=lambda d: d["id"].astype(str))
    rows = rows.drop_duplicates(["series", "id"], keep="last")
    right = rows[rows["exact"].eq(True)]
    series = rows.groupby("series", sort=True)[["bound", "objective", "format"]].first()
    out = []
    for d, dk in series[series["bound"] != "exact"].iterrows():
        for a, ak in series[series["bound"] == "exact"].iterrows():
            both = right.loc[right["series"] == d, ["id", "bin", "latency_s"]].merge(
                right.loc[right["series"] == a, ["id", "latency_s"]], on="id", suffixes=("_d", "_a"))
            for b in bins:
                g = both[both["bin"] == b]
                dl, al = _median(g["latency_s_d"]), _median(g["latency_s_a"])
                out.append({"d_series": d, "a_series": a, "d_objective": dk["objective"],
                            "a_objective": ak["objective"], "d_oracle": is_oracle(dk["format"]),
                            "a_oracle": is_oracle(ak["format"]), "bin": b, "n": len(g), "d_latency_s": dl,
                            "a_latency_s": al, "ratio": dl / al if al > 0 else math.nan})
    return pd.DataFrame(out, columns=MATCHED_COLUMNS), int((~has_id).sum())


def crossover(pair: pd.DataFrame, min_n: int = MIN_MATCHED) -> dict:
    """Where one pair's diffusion series becomes faster (rows of :func:`matched_latency`, in bin
    order). Only bins with at least ``min_n`` items count: ``bin`` is the smallest of them from
    which the diffusion median is below the other in it and in every larger one, None when the
    largest is not; ``bins`` are the bins that count, ``few`` those with 1 to ``min_n`` - 1 items."""
    ok = pair[pair["n"] >= min_n]
    below = (ok["d_latency_s"] < ok["a_latency_s"]).tolist()
    start = len(below)
    while start > 0 and below[start - 1]:
        start -= 1
    return {"bin": ok["bin"].iloc[start] if start < len(below) else None, "bins": ok["bin"].tolist(),
            "few": pair[(pair["n"] > 0) & (pair["n"] < min_n)]["bin"].tolist()}


EM_FIELD = "val_edit_em"  # exact match on fixed val items at an evaluation (sandbox.tasks.edits.learning)
EM_KIND_PREFIX = "val_edit_em_"  # + edit kind


def edit_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """The eval records (rows of :func:`analysis.load.load_metrics`) that carry ``val_edit_em``,
    sorted by run and step; empty when no run logged it."""
    if metrics.empty or EM_FIELD not in metrics or "kind" not in metrics:
        return metrics.iloc[0:0]
    ev = metrics[(metrics["kind"] == "eval") & pd.to_numeric(metrics[EM_FIELD], errors="coerce").notna()]
    return ev.sort_values(["run", "step"], kind="mergesort").reset_index(drop=True)


def curve_kinds(curves: pd.DataFrame) -> list[str]:
    """The edit kinds with a per-kind exact match (``val_edit_em_<kind>``) in ``curves``, sorted."""
    return sorted(c[len(EM_KIND_PREFIX):] for c in curves.columns
                  if c.startswith(EM_KIND_PREFIX) and curves[c].notna().any())
