"""Read what runs and benchmarks wrote. Reads files only: never trains, never imports the
training code, and never raises on a bad folder (unreadable files and torn lines are skipped).

A run folder is any directory holding ``metrics.jsonl`` (and normally ``config.yaml``).

- ``find_runs(patterns)``: run folders matching glob patterns (a pattern may name a run folder
  or a folder above run folders).
- ``read_jsonl(path)`` / ``load_config(run)`` / ``flatten(cfg)``: a JSON-lines file's objects,
  a run's composed config, and that config as ``{"model.d_model": 64, ...}``.
- ``run_identity(run)``: the run's objective label, bound and model name, read from its
  ``metrics.jsonl`` meta and eval lines and its config (rules in :mod:`analysis.labels`).
- ``load_metrics(runs)``: one row per (run, record) with the record's fields and the run's
  flattened config (``cfg.model.d_model`` ...) as columns; ``final_evals(df)``: the last eval
  row per run.
- ``load_quality(runs)``: the sample-quality lines of ``<run>/eval_quality.jsonl``
  (``python -m sandbox.evaluate eval=quality``), one row per line, metrics of the samples as
  ``s_<metric>`` and of the held-out reference as ``r_<metric>``.
- ``find_bench_gen(patterns)`` / ``load_bench_gen(results)``: the generation benchmark's folders
  (``python -m sandbox.bench gen``; ``<out>/gen-<timestamp>/results.jsonl``) and their rows, with
  the ``gen_quality`` rows merged into the points they belong to. A folder without
  ``summary.json`` was interrupted: it loads, marked incomplete.

The tidy table of the comparison (one row per run and evaluation) is :mod:`analysis.table`.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import yaml

from analysis.labels import objective_label, run_bound, section


def _matches(patterns: list[str] | str):
    """Every path matching the glob pattern(s), recursively."""
    for pat in [patterns] if isinstance(patterns, str) else patterns:
        for p in glob.glob(str(pat), recursive=True):
            yield Path(p)


def find_runs(patterns: list[str] | str) -> list[Path]:
    """Run folders (holding ``metrics.jsonl``) matching the patterns or below a match."""
    found: set[Path] = set()
    searched: set[Path] = set()  # folders already searched recursively: 'runs/**' matches every
    for p in sorted(set(_matches(patterns)), key=lambda q: len(q.parts)):  # subfolder too
        if (p / "metrics.jsonl").exists():
            found.add(p)
        elif p.is_dir() and not any(a in searched for a in p.parents):
            searched.add(p)
            found.update(m.parent for m in p.rglob("metrics.jsonl"))
    return sorted(found)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; torn or non-object lines skipped, [] if unreadable."""
    out = []
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_config(run: Path) -> dict:
    """The run's ``config.yaml``; {} when missing or unreadable."""
    p = Path(run) / "config.yaml"
    if not p.exists():
        return {}
    try:
        cfg = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def flatten(d, prefix: str = "") -> dict:
    """Nested mappings as ``{"a.b": v}``; lists as JSON text (a table cell holds one value)."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d if not isinstance(d, list) else json.dumps(d)
    return out


def run_identity(run: Path, cfg: dict | None = None, recs: list[dict] | None = None) -> dict:
    """{label, bound, model} of a run folder, from its files (see :mod:`analysis.labels`)."""
    cfg = load_config(run) if cfg is None else cfg
    recs = read_jsonl(Path(run) / "metrics.jsonl") if recs is None else recs
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    return {"label": objective_label(cfg, meta),
            "bound": run_bound(meta, [r for r in recs if r.get("kind") == "eval"]),
            "model": section(cfg, "model").get("name")}


def load_metrics(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in runs:
        cfg = load_config(run)
        flat = {f"cfg.{k}": v for k, v in flatten(cfg).items()}
        recs = read_jsonl(Path(run) / "metrics.jsonl")
        ident = run_identity(run, cfg, recs)
        meta = {"run": str(run), "run_name": Path(run).name, "model": ident["model"]}
        for rec in recs:
            rows.append({**meta, **rec, **flat, "objective": ident["label"]})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("step", "tokens", "flops"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def final_evals(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "kind" not in df:
        return df.iloc[0:0]
    ev = df[df["kind"] == "eval"]
    if ev.empty:
        return ev
    return ev.sort_values("step").groupby("run", as_index=False).tail(1).sort_values(["objective", "run"])


QUALITY_METRICS = ("n_samples", "judge_bpb", "judge_bpb_stderr", "gen_ppl", "unigram_entropy",
                   "unigram_entropy_pooled", "distinct_1", "distinct_2", "distinct_3", "distinct_4",
                   "ast_parse_rate", "ast_parse_rate_lines", "jsd_1", "jsd_2", "jsd_4", "copied_32")


def load_quality(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in runs:
        lines = [r for r in read_jsonl(Path(run) / "eval_quality.jsonl")
                 if r.get("kind", "quality") == "quality"]
        if not lines:
            continue
        ident = run_identity(run)
        for rec in lines:
            label = ident["label"] if ident["label"] != "?" else rec.get("objective")
            row = {"run": str(run), "run_name": Path(run).name,
                   **{k: v for k, v in rec.items() if k not in ("samples", "reference")},
                   "objective": label, "model": rec.get("model") or ident["model"]}
            for prefix, key in (("s_", "samples"), ("r_", "reference")):
                q = rec.get(key) or {}
                for m in QUALITY_METRICS:
                    row[prefix + m] = q.get(m)
            rows.append(row)
    return pd.DataFrame(rows)


def _is_gen_bench(results: Path) -> bool:
    for rec in read_jsonl(results)[:1]:
        return rec.get("kind") == "meta" and rec.get("bench") == "gen"
    return False


def find_bench_gen(patterns: list[str] | str) -> list[Path]:
    """``results.jsonl`` files of generation benchmarks under the patterns (a pattern may
    name the results file, its folder, or a folder up to two levels above it)."""
    found: set[Path] = set()
    for p in _matches(patterns):
        if p.is_file() and p.name == "results.jsonl":
            cands = [p]
        elif p.is_dir():
            cands = [p / "results.jsonl", *p.glob("*/results.jsonl"), *p.glob("*/*/results.jsonl")]
        else:
            continue
        found.update(c for c in cands if c.is_file() and _is_gen_bench(c))
    return sorted(found)


def load_bench_gen(results: Path) -> dict:
    """{dir, meta, rows, probe, skipped, reference, quality_rows, complete, summary} of one
    benchmark folder (``probe``: the device's measured peak and bandwidth, or None).

    ``rows``: one row per timed point with ``quality`` (a dict or None) merged from the
    ``gen_quality`` rows (also kept as they are in ``quality_rows``); ``reference``: statistics
    of held-out text per family/length."""
    results = Path(results)
    recs = read_jsonl(results)
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    rows = [dict(r) for r in recs if r.get("kind") == "gen"]
    by_point = {r.get("point"): r for r in rows}
    quality_rows = [r for r in recs if r.get("kind") == "gen_quality"]
    for q in quality_rows:
        for pid in q.get("points") or []:
            if pid in by_point:
                by_point[pid]["quality"] = q.get("quality")
    summary_path = results.parent / "summary.json"
    summary = None
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except (json.JSONDecodeError, OSError):
            summary = None
    return {"dir": results.parent, "meta": meta, "rows": rows,
            "probe": next((r for r in recs if r.get("kind") == "probe"), None),
            "skipped": [r for r in recs if r.get("kind") == "skipped"],
            "reference": [r for r in recs if r.get("kind") == "reference"],
            "quality_rows": quality_rows, "complete": summary is not None, "summary": summary}
