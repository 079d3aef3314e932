"""Read run folders into tidy tables. Reads only what runs wrote; never trains.

A run folder is any directory holding ``metrics.jsonl`` (and normally ``config.yaml``).

- ``find_runs(patterns)``: run folders matching glob patterns (a pattern may name a
  run folder or a folder above run folders).
- ``load_metrics(runs)``: one row per (run, record) with the record's fields and the
  run's flattened config (``cfg.model.d_model`` ...) as columns. Unreadable or torn lines
  are skipped; a run without ``config.yaml`` still loads (its config columns are empty).
- ``final_evals(df)``: the last eval row per run.
- ``load_quality(runs)``: the sample-quality lines of ``<run>/eval_quality.jsonl``
  (``python -m sandbox.evaluate eval=quality``), one row per line, metrics of the samples
  as ``s_<metric>`` and of the held-out reference as ``r_<metric>``.
- ``find_bench_gen(patterns)`` / ``load_bench_gen(results)``: the generation benchmark's
  folders (``python -m sandbox.bench gen``; ``<out>/gen-<timestamp>/results.jsonl``) and
  their rows, with the ``gen_quality`` rows merged into the points they belong to.
  A folder without ``summary.json`` was interrupted: it loads, marked incomplete.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import yaml


def _matches(patterns: list[str] | str):
    """Every path matching the glob pattern(s), recursively."""
    for pat in [patterns] if isinstance(patterns, str) else patterns:
        for p in glob.glob(str(pat), recursive=True):
            yield Path(p)


def find_runs(patterns: list[str] | str) -> list[Path]:
    found: set[Path] = set()
    for p in _matches(patterns):
        if (p / "metrics.jsonl").exists():
            found.add(p)
        elif p.is_dir():
            found.update(m.parent for m in p.rglob("metrics.jsonl"))
    return sorted(found)


def _flatten(d, prefix="cfg"):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
    else:
        out[prefix] = d if not isinstance(d, list) else json.dumps(d)
    return out


def load_config(run: Path) -> dict:
    p = Path(run) / "config.yaml"
    if not p.exists():
        return {}
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError:
        return {}


def load_metrics(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in runs:
        cfg = load_config(run)
        flat = _flatten(cfg)
        objective = (cfg.get("objective") or {}).get("name")
        model = (cfg.get("model") or {}).get("name")
        meta = {"run": str(run), "run_name": Path(run).name, "objective": objective, "model": model}
        text = (Path(run) / "metrics.jsonl").read_text() if (Path(run) / "metrics.jsonl").exists() else ""
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "meta" and not meta.get("objective"):
                meta["objective"] = rec.get("objective")
            rows.append({**meta, **rec, **flat})
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


QUALITY_METRICS = ("n_samples", "gen_ppl", "unigram_entropy", "unigram_entropy_pooled", "distinct_1",
                   "distinct_2", "distinct_3", "distinct_4", "ast_parse_rate", "ast_parse_rate_lines")


def load_quality(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for run in runs:
        cfg = load_config(run)
        for rec in read_jsonl(Path(run) / "eval_quality.jsonl"):
            if rec.get("kind", "quality") != "quality":
                continue
            row = {"run": str(run), "run_name": Path(run).name,
                   "objective": rec.get("objective") or (cfg.get("objective") or {}).get("name"),
                   "model": rec.get("model") or (cfg.get("model") or {}).get("name"),
                   **{k: v for k, v in rec.items() if k not in ("samples", "reference")}}
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
    """{dir, meta, rows, skipped, reference, complete, summary} of one benchmark folder.

    ``rows``: one row per timed point with ``quality`` (a dict or None) merged from the
    ``gen_quality`` rows; ``reference``: statistics of held-out text per family/length."""
    results = Path(results)
    recs = read_jsonl(results)
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    rows = [dict(r) for r in recs if r.get("kind") == "gen"]
    by_point = {r.get("point"): r for r in rows}
    for q in (r for r in recs if r.get("kind") == "gen_quality"):
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
            "skipped": [r for r in recs if r.get("kind") == "skipped"],
            "reference": [r for r in recs if r.get("kind") == "reference"],
            "complete": summary is not None, "summary": summary}
