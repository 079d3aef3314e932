"""Code-edit benchmark results: read ``<run>/eval_edits*.jsonl`` into tables.

Written by ``python -m sandbox.evaluate eval=edits`` (one file per run, or one per format /
sampler: every file matching the glob is read). Never evaluates anything; the report section
is :mod:`analysis.sections.edits`. Expected lines (JSON objects; other kinds and torn lines are
skipped):

**Summary**, one per (run, format, sampler setting)::

    {"kind": "edits", "run": "runs/edits/ar", "objective": "ar", "model": "tiny",
     "format": "whole",  # whole | udiff | inplace | inplace_oracle_length | inplace_oracle_positions
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
     "settings": {...}, "edit_kind": "rename", "diff_tokens": 3, "diff_bin": "2-4",
     "function_bytes": 180, "latency_s": 0.05, "nfe": 41, "exact": true}

A latency row belongs to the summary of the same run, format, sampler and settings.

**Diff-size bins are the evaluator's.** Summary lines name their bins (``diff_bins``) and
latency lines their bin (``diff_bin``); the report uses them as written. Files written before
those fields existed get the former fixed bins (:data:`LEGACY_DIFF_BINS`, :func:`legacy_diff_bin`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.labels import settings_text
from analysis.load import read_jsonl, run_identity

LATENCY_FIELDS = ("edit_kind", "diff_tokens", "function_bytes", "latency_s", "nfe", "exact")
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
