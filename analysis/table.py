"""The tidy table of the comparison: one row per run and evaluation step.

``load_runs(runs)`` returns :data:`TABLE_COLUMNS` followed by the run's flattened config, one
column per config path (``objective.name``, ``model.d_model``, ``train.flop_budget``, ``seed``,
``data._target_`` ...). A run without any evaluation yet still has one row (its last logged
step, the eval columns empty), so half-finished runs show up, flagged ``finished=False``. A run
whose bound (exact or upper) is recorded nowhere loads with ``known_objective=False``: labels and
bounds come from the run's files (:mod:`analysis.labels`), never from a list of objective names.
Nothing here raises on a bad run folder: unreadable files and torn lines are skipped and noted
in ``problems``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.formatting import num
from analysis.labels import disambiguate, section, setting_key, setting_label, size_label
from analysis.load import find_runs, flatten, load_config, read_jsonl, run_identity

# Where a run may record the number of unique tokens it trains on (a repetition study's fixed
# data). Meta-line keys first (what the run actually had), then config keys (what it asked for).
UNIQUE_TOKEN_META = ("unique_tokens", "train_unique_tokens", "train_split_tokens", "train_tokens")
UNIQUE_TOKEN_CONFIG = ("train.unique_tokens", "data.unique_tokens")

#: Columns of :func:`load_runs` before the flattened config columns, in order.
TABLE_COLUMNS = (
    "run", "run_name",
    "objective",        # label: meta objective_label, else objective.name[(block_size)], "?" if none
    "model",            # model.name
    "size",             # model.name and non-embedding parameters, e.g. "d64 (0.16M)"
    "setting",          # what makes held-out figures comparable: data, tokenizer, seq_len, split
    "setting_key",      # every option of the setting; "setting" is its short label
    "params",           # non-embedding parameters (meta line)
    "flops_per_token",  # training FLOPs per window token (meta line; BD3LM counts its 2L input)
    "total_steps",      # the step the run ends at (meta line; else train.steps without a budget)
    "budget",           # train.flop_budget (NaN when the run was given steps)
    "step", "tokens", "flops",
    "unique_tokens",    # unique training tokens when recorded (see UNIQUE_TOKEN_*), else NaN
    "epochs",           # tokens / unique_tokens
    "val_bpb", "val_bpb_stderr", "val_nats_per_token",
    "bound",            # exact | upper (negative ELBO), as the run recorded it; None if it did not
    "true_bpb",         # synthetic corpus only: the exact entropy rate
    "final",            # the run's last row
    "finished",         # the run evaluated at its last step
    "known_objective",  # the run records its bound
    "has_config",
    "problems",         # why a run is flagged ("" when nothing is wrong)
)
TEXT_COLUMNS = ("run", "run_name", "objective", "model", "size", "setting", "setting_key", "bound",
                "problems")


def _unique_tokens(meta: dict, flat: dict) -> float:
    for k in UNIQUE_TOKEN_META:
        if num(meta.get(k)) > 0:
            return num(meta.get(k))
    for k in UNIQUE_TOKEN_CONFIG:
        if num(flat.get(k)) > 0:
            return num(flat.get(k))
    return math.nan


def _run_rows(run: Path) -> list[dict]:
    run = Path(run)
    problems = []
    cfg = load_config(run)
    if not cfg:
        problems.append("no readable config.yaml")
    flat = flatten(cfg)
    recs = read_jsonl(run / "metrics.jsonl")
    meta = next((r for r in recs if r.get("kind") == "meta"), {})
    ident = run_identity(run, cfg, recs)
    label, bound = ident["label"], ident["bound"]
    if bound is None:
        problems.append(f"unknown objective {label!r}: no bound (exact or upper) recorded")
    total = num(meta.get("total_steps"))
    budget = num(flat.get("train.flop_budget"))
    if math.isnan(total) and math.isnan(budget):
        total = num(flat.get("train.steps"))  # a run given steps ends at train.steps
    if not meta:
        problems.append("no meta line in metrics.jsonl")
    steps = [num(r.get("step")) for r in recs if r.get("kind") in ("train", "eval")]
    steps = [x for x in steps if not math.isnan(x)]
    evals = sorted((r for r in recs if r.get("kind") == "eval" and not math.isnan(num(r.get("step")))),
                   key=lambda r: num(r["step"]))
    unique = _unique_tokens(meta, flat)
    last_step = max(steps) if steps else math.nan
    finished = bool(evals) and not math.isnan(total) and num(evals[-1]["step"]) >= total
    if not finished:
        where = ("no evaluation yet" if not evals
                 else f"last evaluation at step {int(num(evals[-1]['step']))}")
        of = f" of {int(total)}" if not math.isnan(total) else " (total steps unknown)"
        problems.append(f"unfinished: {where}{of}")
    model = section(cfg, "model").get("name")
    base = {
        "run": str(run), "run_name": run.name, "objective": label, "model": model,
        "size": size_label(model, meta.get("params_non_embedding")),
        "setting": setting_label(cfg), "setting_key": setting_key(cfg),
        "params": num(meta.get("params_non_embedding")),
        "flops_per_token": num(meta.get("train_flops_per_token")),
        "total_steps": total, "budget": budget, "unique_tokens": unique,
        "true_bpb": num(meta.get("true_bpb")),
        "finished": finished, "known_objective": bound is not None, "has_config": bool(cfg),
        "problems": "; ".join(problems),
    }
    rows = []
    if evals:
        for r in evals:
            rows.append({**base, "step": num(r.get("step")), "tokens": num(r.get("tokens")),
                         "flops": num(r.get("flops")), "val_bpb": num(r.get("val_bpb")),
                         "val_bpb_stderr": num(r.get("val_bpb_stderr")),
                         "val_nats_per_token": num(r.get("val_nats_per_token")),
                         "bound": r.get("bound") or bound})
    else:  # no evaluation yet: one row at the last logged step, eval columns empty
        last = max((r for r in recs if r.get("kind") == "train"), key=lambda r: num(r.get("step")),
                   default={})
        rows.append({**base, "step": last_step, "tokens": num(last.get("tokens")),
                     "flops": num(last.get("flops")), "val_bpb": math.nan, "val_bpb_stderr": math.nan,
                     "val_nats_per_token": math.nan, "bound": bound})
    for i, r in enumerate(rows):
        r["final"] = i == len(rows) - 1
        r["epochs"] = r["tokens"] / unique if unique > 0 else math.nan
    return [{**r, **{k: v for k, v in flat.items() if k not in r}} for r in rows]


def load_runs(runs: list[Path] | list[str] | str) -> pd.DataFrame:
    """The tidy table: one row per (run, evaluation step); see :data:`TABLE_COLUMNS`.

    ``runs``: run folders, or glob pattern(s) passed to :func:`analysis.load.find_runs`. Never
    raises on a bad run folder. Rows are sorted by objective, model size, budget, seed, run and
    step."""
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
            df[c] = pd.Series(dtype=object if c in TEXT_COLUMNS else float)
    for c in ("finished", "known_objective", "has_config", "final"):
        df[c] = df[c].fillna(False).astype(bool)
    df["problems"] = df["problems"].fillna("")
    cfg_cols = sorted(c for c in df.columns if c not in TABLE_COLUMNS)
    df = df[list(TABLE_COLUMNS) + cfg_cols]
    if df.empty:
        return df
    keyed = df["setting_key"].notna()
    labels = disambiguate(dict(zip(df.loc[keyed, "setting_key"], df.loc[keyed, "setting"])))
    df.loc[keyed, "setting"] = [labels[k] for k in df.loc[keyed, "setting_key"]]
    seed = df["seed"] if "seed" in df else pd.Series(0, index=df.index)
    order = pd.DataFrame({"o": df["objective"].astype(str), "p": df["params"].fillna(-1),
                          "b": df["budget"].fillna(-1), "s": pd.to_numeric(seed, errors="coerce").fillna(-1),
                          "r": df["run"], "t": df["step"].fillna(-1)})
    idx = order.sort_values(["o", "p", "b", "s", "r", "t"], kind="mergesort").index
    return df.loc[idx].reset_index(drop=True)
