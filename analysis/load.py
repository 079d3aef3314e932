"""Read run folders into tidy tables. Reads only what runs wrote; never trains.

A run folder is any directory holding ``metrics.jsonl`` (and normally ``config.yaml``).

- ``find_runs(patterns)``: run folders matching glob patterns (a pattern may name a
  run folder or a folder above run folders).
- ``load_metrics(runs)``: one row per (run, record) with the record's fields and the
  run's flattened config (``cfg.model.d_model`` ...) as columns. Unreadable or torn lines
  are skipped; a run without ``config.yaml`` still loads (its config columns are empty).
- ``final_evals(df)``: the last eval row per run.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd
import yaml


def find_runs(patterns: list[str] | str) -> list[Path]:
    if isinstance(patterns, str):
        patterns = [patterns]
    found: set[Path] = set()
    for pat in patterns:
        for p in glob.glob(str(pat), recursive=True):
            p = Path(p)
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
