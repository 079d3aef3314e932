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
- ``load_runs(runs)``: **the tidy table** of the comparison, one row per run and evaluation
  step (see :data:`TABLE_COLUMNS`), with the run's flattened config as columns named by
  their config path (``objective.name``, ``model.d_model``, ``train.flop_budget``, ``seed``,
  ``data._target_`` ...). A run without any evaluation yet still has one row (its last
  logged step, the eval columns empty), so half-finished runs show up, flagged
  ``finished=False``; a run of an objective this code does not know loads with
  ``known_objective=False``. Nothing here raises on a bad run folder: unreadable files and
  torn lines are skipped and noted in ``problems``.
"""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pandas as pd
import yaml


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
        recs = read_jsonl(Path(run) / "metrics.jsonl")
        run_meta = next((r for r in recs if r.get("kind") == "meta"), {})
        label, _ = objective_label(cfg, run_meta)
        model = _section(cfg, "model").get("name")
        meta = {"run": str(run), "run_name": Path(run).name, "objective": label, "model": model}
        for rec in recs:
            rows.append({**meta, **rec, **flat, "objective": label})
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


# --- the tidy table ---------------------------------------------------------------------------
KNOWN_OBJECTIVES = {"ar": "exact", "mdlm": "upper", "bd3lm": "upper"}  # name -> kind of likelihood

# Where a run may record the number of unique tokens it trains on (a repetition study's fixed
# data). Meta-line keys first (what the run actually had), then config keys (what it asked for).
UNIQUE_TOKEN_META = ("unique_tokens", "train_unique_tokens", "train_split_tokens", "train_tokens")
UNIQUE_TOKEN_CONFIG = ("train.unique_tokens", "data.unique_tokens")

#: Columns of :func:`load_runs` before the flattened config columns, in order.
TABLE_COLUMNS = (
    "run", "run_name",
    "objective",        # label: ar, mdlm, bd3lm(16) (block size), or the unknown name as written
    "model",            # model.name
    "size",             # model.name and non-embedding parameters, e.g. "d64 (0.16M)"
    "setting",          # what makes held-out figures comparable: data, tokenizer, seq_len, split
    "params",           # non-embedding parameters (meta line)
    "flops_per_token",  # training FLOPs per window token (meta line; BD3LM counts its 2L input)
    "total_steps",      # the step the run ends at (meta line; else train.steps without a budget)
    "budget",           # train.flop_budget (NaN when the run was given steps)
    "step", "tokens", "flops",
    "unique_tokens",    # unique training tokens when recorded (see UNIQUE_TOKEN_*), else NaN
    "epochs",           # tokens / unique_tokens
    "val_bpb", "val_bpb_stderr", "val_nats_per_token",
    "bound",            # exact (AR) | upper (diffusion: negative ELBO)
    "true_bpb",         # synthetic corpus only: the exact entropy rate
    "final",            # the run's last row
    "finished",         # the run evaluated at its last step
    "known_objective",
    "has_config",
    "problems",         # why a run is flagged ("" when nothing is wrong)
)


def _section(cfg: dict, key: str) -> dict:
    v = cfg.get(key) if isinstance(cfg, dict) else None
    return v if isinstance(v, dict) else {}


def objective_label(cfg: dict, meta: dict | None = None) -> tuple[str, bool]:
    """(label, known): ``ar``, ``mdlm``, ``bd3lm(<block_size>)``; an objective this code does
    not know keeps its name (``?`` when none is recorded) and ``known=False``."""
    obj = _section(cfg, "objective")
    name = obj.get("name") or (meta or {}).get("objective")
    if not name:
        return "?", False
    name = str(name)
    if name == "bd3lm":
        bs = obj.get("block_size")
        return (f"bd3lm({bs})" if bs is not None else "bd3lm"), True
    return name, name in KNOWN_OBJECTIVES


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def size_label(name, params) -> str:
    p = _num(params)
    if math.isnan(p):
        return str(name or "?")
    return f"{name or '?'} ({p / 1e6:.3g}M)"


def setting_label(flat: dict) -> str:
    """Data (class and its options), tokenizer, sequence length and training split: runs of
    different settings are never compared with each other."""
    data = str(flat.get("data._target_") or "?").rsplit(".", 1)[-1]
    opts = [f"{k[len('data.'):]}={v}" for k, v in sorted(flat.items())
            if k.startswith("data.") and not k.endswith("_target_") and v is not None
            and not (k in ("data.val_fraction", "data.test_fraction") and v == 0.05)]
    tok = str(flat.get("tokenizer._target_") or "?").rsplit(".", 1)[-1].removesuffix("Tokenizer").lower()
    tok_opts = [f"{k[len('tokenizer.'):]}={v}" for k, v in sorted(flat.items())
                if k.startswith("tokenizer.") and k != "tokenizer._target_" and v is not None]
    out = f"{data}({', '.join(opts)})" if opts else data
    out += f", {tok or '?'}" + (f"({', '.join(tok_opts)})" if tok_opts else "")
    out += f", seq {flat.get('train.seq_len', '?')}"
    split = flat.get("train.train_split") or "train"
    return out + ("" if split == "train" else f", trained on {split}")


def _unique_tokens(meta: dict, flat: dict) -> float:
    for k in UNIQUE_TOKEN_META:
        if _num(meta.get(k)) > 0:
            return _num(meta.get(k))
    for k in UNIQUE_TOKEN_CONFIG:
        if _num(flat.get(k)) > 0:
            return _num(flat.get(k))
    return math.nan


def _run_rows(run: Path) -> list[dict]:
    run = Path(run)
    problems = []
    cfg = load_config(run)
    if not cfg:
        problems.append("no readable config.yaml")
    flat = {k[len("cfg."):]: v for k, v in _flatten(cfg).items()} if isinstance(cfg, dict) else {}
    recs = read_jsonl(run / "metrics.jsonl")
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    label, known = objective_label(cfg, meta)
    if not known:
        problems.append(f"unknown objective {label!r}")
    name = _section(cfg, "objective").get("name") or meta.get("objective")
    bound_default = KNOWN_OBJECTIVES.get(str(name)) if name else None
    total = _num(meta.get("total_steps"))
    budget = _num(flat.get("train.flop_budget"))
    if math.isnan(total) and math.isnan(budget):
        total = _num(flat.get("train.steps"))  # a run given steps ends at train.steps
    if not meta:
        problems.append("no meta line in metrics.jsonl")
    steps = [_num(r.get("step")) for r in recs if r.get("kind") in ("train", "eval")]
    steps = [x for x in steps if not math.isnan(x)]
    evals = sorted((r for r in recs if r.get("kind") == "eval" and not math.isnan(_num(r.get("step")))),
                   key=lambda r: _num(r["step"]))
    unique = _unique_tokens(meta, flat)
    last_step = max(steps) if steps else math.nan
    finished = bool(evals) and not math.isnan(total) and _num(evals[-1]["step"]) >= total
    if not finished:
        where = ("no evaluation yet" if not evals
                 else f"last evaluation at step {int(_num(evals[-1]['step']))}")
        of = f" of {int(total)}" if not math.isnan(total) else " (total steps unknown)"
        problems.append(f"unfinished: {where}{of}")
    base = {
        "run": str(run), "run_name": run.name, "objective": label,
        "model": _section(cfg, "model").get("name"),
        "size": size_label(_section(cfg, "model").get("name"), meta.get("params_non_embedding")),
        "setting": setting_label(flat),
        "params": _num(meta.get("params_non_embedding")),
        "flops_per_token": _num(meta.get("train_flops_per_token")),
        "total_steps": total, "budget": budget, "unique_tokens": unique,
        "true_bpb": _num(meta.get("true_bpb")),
        "finished": finished, "known_objective": known, "has_config": bool(cfg),
        "problems": "; ".join(problems),
    }
    rows = []
    if evals:
        for r in evals:
            rows.append({**base, "step": _num(r.get("step")), "tokens": _num(r.get("tokens")),
                         "flops": _num(r.get("flops")), "val_bpb": _num(r.get("val_bpb")),
                         "val_bpb_stderr": _num(r.get("val_bpb_stderr")),
                         "val_nats_per_token": _num(r.get("val_nats_per_token")),
                         "bound": r.get("bound") or bound_default})
    else:  # no evaluation yet: one row at the last logged step, eval columns empty
        last = max((r for r in recs if r.get("kind") == "train"), key=lambda r: _num(r.get("step")),
                   default={})
        rows.append({**base, "step": last_step, "tokens": _num(last.get("tokens")),
                     "flops": _num(last.get("flops")), "val_bpb": math.nan, "val_bpb_stderr": math.nan,
                     "val_nats_per_token": math.nan, "bound": bound_default})
    for i, r in enumerate(rows):
        r["final"] = i == len(rows) - 1
        r["epochs"] = r["tokens"] / unique if unique > 0 else math.nan
    return [{**r, **{k: v for k, v in flat.items() if k not in r}} for r in rows]


def load_runs(runs: list[Path] | list[str] | str) -> pd.DataFrame:
    """The tidy table: one row per (run, evaluation step); see :data:`TABLE_COLUMNS`.

    ``runs``: run folders, or glob pattern(s) passed to :func:`find_runs`. Never raises on a
    bad run folder. Rows are sorted by objective, model size, budget, seed, run and step."""
    if isinstance(runs, str) or (runs and all(isinstance(r, str) and any(c in r for c in "*?[")
                                               for r in runs)):
        runs = find_runs(runs)
    rows = []
    for run in runs:
        try:
            rows += _run_rows(Path(run))
        except Exception as e:  # a folder this code cannot read must not hide the others
            rows.append({"run": str(run), "run_name": Path(run).name, "objective": "?", "final": True,
                         "finished": False, "known_objective": False, "has_config": False,
                         "problems": f"unreadable: {type(e).__name__}: {e}"})
    df = pd.DataFrame(rows)
    for c in TABLE_COLUMNS:
        if c not in df:
            text = ("run", "run_name", "objective", "model", "size", "setting", "bound", "problems")
            df[c] = pd.Series(dtype=object if c in text else float)
    for c in ("finished", "known_objective", "has_config", "final"):
        df[c] = df[c].fillna(False).astype(bool)
    df["problems"] = df["problems"].fillna("")
    cfg_cols = sorted(c for c in df.columns if c not in TABLE_COLUMNS)
    df = df[list(TABLE_COLUMNS) + cfg_cols]
    if df.empty:
        return df
    seed = df["seed"] if "seed" in df else pd.Series(0, index=df.index)
    order = pd.DataFrame({"o": df["objective"].astype(str), "p": df["params"].fillna(-1),
                          "b": df["budget"].fillna(-1), "s": pd.to_numeric(seed, errors="coerce").fillna(-1),
                          "r": df["run"], "t": df["step"].fillna(-1)})
    idx = order.sort_values(["o", "p", "b", "s", "r", "t"], kind="mergesort").index
    return df.loc[idx].reset_index(drop=True)
