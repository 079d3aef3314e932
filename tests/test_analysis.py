"""The analysis side of the comparison (issue #7) on committed synthetic run folders
(``tests/fixtures/run_folders/``, written by ``tests/fixtures/make_runs.py``): the tidy table, the
power-law fit, the headline ratio, and the report with every figure. Nothing is trained."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, REPO

from analysis import load, scaling
from analysis.report import build_report

RUNS = FIXTURES / "run_folders"
N_RUNS = 29  # 18 scaling + 2 second seeds + 1 extra budget + half + unknown + 6 repetition

FIGURES = ("learning_curves.png", "bpb_vs_tokens.png", "bpb_vs_flops.png", "isoflop.png", "scaling.png",
           "repetition.png", "edits_vs_diff_size.png", "edits_latency_vs_function_length.png",
           "edits_exact_by_kind.png", "edits_exact_vs_latency.png")


def _images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def _final(df: pd.DataFrame, name: str) -> pd.Series:
    rows = df[(df["run_name"] == name) & df["final"]]
    assert len(rows) == 1, name
    return rows.iloc[0]


# --- the tidy table ------------------------------------------------------------------------------
def test_loader_yields_the_tidy_table():
    df = load.load_runs(str(RUNS / "**"))
    assert list(df.columns[:len(load.TABLE_COLUMNS)]) == list(load.TABLE_COLUMNS)
    for col in ("objective.name", "objective.block_size", "model.name", "model.d_model", "train.flop_budget",
                "seed", "data._target_", "train.steps"):
        assert col in df.columns, col
    assert df["run"].nunique() == N_RUNS
    assert df.groupby("run").size().max() == 2            # one row per eval step (two per finished run)
    assert int(df["final"].sum()) == N_RUNS
    assert set(df["objective"]) == {"ar", "mdlm", "bd3lm(16)", "sedd"}

    r = _final(df, "ar_d32_1e11_s0")
    ident = (r["objective"], r["objective.name"], r["model"], r["model.d_model"], r["seed"])
    assert ident == ("ar", "ar", "d32", 32, 0)
    assert r["step"] == 652 and r["tokens"] == 652 * 1024 and r["flops"] == pytest.approx(652 * 1024 * 1.5e5)
    assert r["budget"] == r["train.flop_budget"] == 1e11
    assert r["params"] == 20_000 and r["flops_per_token"] == 1.5e5 and r["total_steps"] == 652
    assert r["bound"] == "exact" and math.isnan(r["val_bpb_stderr"]) and r["finished"] and r["problems"] == ""
    assert r["val_bpb"] == pytest.approx(1.2 + 40 / 20_000 ** 0.35 + 60 / (652 * 1024) ** 0.3, abs=1e-6)
    assert r["data._target_"] == "sandbox.data.corpora.StdlibCode"

    b = _final(df, "bd3lm_d64_1e12_s0")
    assert b["objective"] == "bd3lm(16)" and b["objective.block_size"] == 16 and b["bound"] == "upper"
    assert b["val_bpb_stderr"] == 0.01 and b["flops_per_token"] == pytest.approx(2.3 * 5.5e5)

    half = df[df["run_name"] == "half_mdlm"]                # stopped mid-run, torn last line
    assert len(half) == 1 and not half["finished"].any()
    assert half.iloc[0]["step"] == 326
    assert "unfinished: last evaluation at step 326 of 652" in half.iloc[0]["problems"]

    unk = _final(df, "unknown_sedd")                        # loads, flagged, never dropped
    assert not unk["known_objective"] and unk["finished"] and "unknown objective 'sedd'" in unk["problems"]

    rep = _final(df, "ar_e16")
    assert rep["unique_tokens"] == 102_400 and rep["epochs"] == pytest.approx(16.0)
    assert math.isnan(rep["budget"]) and rep["total_steps"] == 1600
    mid = df[(df["run_name"] == "ar_e16") & ~df["final"]].iloc[0]
    assert mid["epochs"] == pytest.approx(8.0)
    assert df[df["run_name"].str.contains("_s0")]["epochs"].isna().all()  # no unique tokens recorded

    # the older public functions still work (report sections and tests/test_report.py use them)
    runs = load.find_runs(str(RUNS / "**"))
    assert len(runs) == N_RUNS
    m = load.load_metrics(runs)
    fe = load.final_evals(m)
    assert len(fe) == N_RUNS and set(fe["objective"]) == {"ar", "mdlm", "bd3lm(16)", "sedd"}


def test_loader_never_crashes_on_broken_runs(tmp_path):
    (tmp_path / "noeval").mkdir()           # no config, one train line, then garbage
    (tmp_path / "noeval" / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 5, "tokens": 50, "flops": 5e6}) + "\n[1, 2]\nnot json\n{\"kind")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "empty" / "config.yaml").write_text(": : not yaml : [")
    df = load.load_runs(str(tmp_path / "*"))
    assert len(df) == 2 and not df["finished"].any() and not df["known_objective"].any()
    ne = _final(df, "noeval")
    assert ne["objective"] == "?" and ne["step"] == 5 and ne["tokens"] == 50 and math.isnan(ne["val_bpb"])
    assert "no readable config.yaml" in ne["problems"] and "no evaluation yet" in ne["problems"]
    assert load.load_runs([]).empty


# --- fits ----------------------------------------------------------------------------------------------
def test_power_law_fit_recovers_known_parameters():
    c = np.geomspace(1e12, 1e15, 6)
    exact = scaling.fit_power_law(c, 50.0 * c ** -0.08)
    assert exact["a"] == pytest.approx(50.0, rel=1e-9) and exact["b"] == pytest.approx(0.08, rel=1e-9)
    assert exact["b_lo"] == pytest.approx(0.08, abs=1e-9) and exact["dof"] == 4

    rng = np.random.default_rng(0)
    hits, widths = 0, []
    for _ in range(40):                     # ~95% of the intervals cover the true exponent
        cc = np.repeat(np.geomspace(1e12, 1e15, 4), 2)
        noisy = 50.0 * cc ** -0.08 * np.exp(rng.normal(0, 0.01, len(cc)))
        f = scaling.fit_power_law(cc, noisy)
        assert f["b"] == pytest.approx(0.08, abs=0.01) and f["a"] == pytest.approx(50.0, rel=0.5)
        hits += f["b_lo"] <= 0.08 <= f["b_hi"] and f["a_lo"] <= 50.0 <= f["a_hi"]
        widths.append(f["b_hi"] - f["b_lo"])
    assert hits >= 34 and 0 < np.median(widths) < 0.02
    two = scaling.fit_power_law([1e12, 1e13], [3.0, 2.5])
    assert two["dof"] == 0 and math.isnan(two["b_lo"])
    assert two["b"] == pytest.approx(math.log(3.0 / 2.5) / math.log(10))
    assert scaling.fit_power_law([1e12, 1e12], [3.0, 2.9]) is None
    assert scaling.fit_power_law([1e12], [3.0]) is None


def test_headline_matches_budgets_and_interpolates_ar():
    table = load.load_runs(str(RUNS / "**"))
    pts = scaling.budget_points(table)
    assert not pts["run_name"].isin(["half_mdlm", "unknown_sedd"]).any()
    assert not pts["run_name"].str.endswith(("_e1", "_e4", "_e16")).any()   # step-given runs stay out
    groups = scaling.grouped(pts)
    front = scaling.frontier(groups)
    fits = scaling.fit_all(pts, front)
    assert set(fits) == {"ar", "mdlm", "bd3lm(16)"} and fits["ar"]["n"] == 4   # 3 budgets, 2 seeds at one
    two_seeds = groups[(groups["objective"] == "ar") & (groups["params"] == 80_000)
                       & (groups["cgroup"] == 3e11)]
    assert two_seeds.iloc[0]["n_seeds"] == 2 and two_seeds.iloc[0]["bpb_se"] == pytest.approx(0.01)
    h = scaling.headline(pts, front, fits)
    assert len(h) == 7 and set(h["objective"]) == {"mdlm", "bd3lm(16)"}
    same = h[h["ar_how"] == "same budget"]
    assert len(same) == 6
    r = same[(same["objective"] == "mdlm") & (same["budget"] == 1e12)].iloc[0]
    assert r["ratio"] == pytest.approx(2 ** (r["bpb"] - r["ar_bpb"]))
    assert r["ratio_lo"] < r["ratio"] < r["ratio_hi"]
    inter = h[h["ar_how"].str.startswith("interpolated")].iloc[0]        # bd3lm at 5e11: no AR run there
    assert inter["budget"] == 5e11
    ar = front[front["objective"] == "ar"].sort_values("flops")
    lo, hi = ar.iloc[1], ar.iloc[2]                                      # 3e11 and 1e12
    t = (math.log(inter["flops"]) - math.log(lo["flops"])) / (math.log(hi["flops"]) - math.log(lo["flops"]))
    expect = math.exp((1 - t) * math.log(lo["bpb_mean"]) + t * math.log(hi["bpb_mean"]))
    assert inter["ar_bpb"] == pytest.approx(expect, rel=1e-9)


# --- the report -------------------------------------------------------------------------------------------
def test_report_on_the_fixture_writes_every_figure_and_is_idempotent(tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "analysis.report", f"runs_glob={RUNS}/**", f"out={out}",
                        "title=Fixture"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    assert "Could not be produced" not in md, md
    imgs = _images(md)
    for name in FIGURES:
        assert name in imgs, (name, imgs)
    for i in imgs:
        assert (out / i).is_file() and (out / i).stat().st_size > 1000, i
    for heading in ("## Headline", "## Held-out bits per byte vs tokens and FLOPs", "## IsoFLOP curves",
                    "## Data repetition", "## Code edits", "## Runs"):
        assert heading in md, heading
    head = md.split("## Headline")[1].split("\n## ")[0]
    assert "upper bound" in head and "per byte" in head
    for ref in ("~1.32", "~1.21", "~1.18", "~1.11", "OpenWebText", "LM1B", "text8"):
        assert ref in head, ref
    assert "| 5e+11 | bd3lm(16) |" in head and "interpolated (log-log)" in head and "sedd" not in head
    assert "| ar | 3 | 4 |" in md                       # fit table: 3 budgets, 4 points
    assert "Student-t" in md and "L = a * C^(-b)" in md
    assert "below AR's exact figure at 16 epochs (mdlm)" in md
    assert "| ar/d64 whole ar temperature=0.0 | 40 | 50.0% |" in md
    # diffusion / AR latency per diff bin, against AR of the same format (whole for inplace)
    assert ("| mdlm/d64 inplace mdm_threshold steps=16 | ar/d64 whole ar temperature=0.0 | "
            "0.25 (36.0% / 60.0%) | 0.25 (30.0% / 50.0%) | 0.25 (21.0% / 35.0%) | "
            "0.25 (12.0% / 20.0%) |") in md
    runs = md.split("## Runs")[1]
    assert "`half_mdlm`" in runs and "`unknown_sedd`" in runs and "27 finished runs" in runs

    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    again = build_report(f"{RUNS}/**", out, title="Fixture").read_text()
    assert again == md                                  # idempotent: same report, same figures
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == pngs


def test_missing_inputs_give_labelled_gaps(tmp_path):
    runs = tmp_path / "runs"
    for name in ("half_mdlm", "unknown_sedd"):          # nothing finished of a known objective
        shutil.copytree(RUNS / "scaling" / name, runs / name)
    md = build_report(str(runs / "*"), tmp_path / "a").read_text()
    assert "Could not be produced" not in md
    assert "_Not computed: needs finished runs of AR and of a diffusion objective" in md
    assert "~1.32" in md                                # the references still stand
    assert "_No finished runs of a known objective given a training-FLOP budget" in md
    assert "_No finished runs of a known objective: nothing to plot._" in md
    assert "_No code-edit evaluations in these runs" in md
    assert "isoflop.png" not in md and "scaling.png" not in md

    # repetition runs that do not record unique tokens: labelled, drawn against tokens instead;
    # a torn eval_edits line and latency rows without a summary do not crash either
    other = tmp_path / "runs2"
    for d in (RUNS / "repetition").iterdir():
        shutil.copytree(d, other / d.name)
        p = other / d.name / "metrics.jsonl"
        p.write_text(p.read_text().replace(', "unique_tokens": 102400', ""))
    (other / "ar_e1" / "eval_edits.jsonl").write_text(
        json.dumps({"kind": "edits_latency", "diff_tokens": 2, "latency_s": 0.1}) + "\n{\"kind\": \"ed")
    md = build_report(str(other / "*"), tmp_path / "b").read_text()
    assert "Could not be produced" not in md
    assert "_Epochs unknown: no run records its number of unique training tokens" in md
    assert "repetition_tokens.png" in _images(md) and (tmp_path / "b" / "repetition_tokens.png").is_file()
    assert "_No code-edit evaluations in these runs" in md and "1 latency rows without a summary" in md
    assert "_Not computed" in md                        # step-given runs are not compute-matched


def test_only_runs_of_one_setting_are_compared(tmp_path):
    import yaml

    runs = tmp_path / "runs"
    for name, edit in (("ar_d32_1e11_s0", {"seq_len": 64}), ("mdlm_d32_1e11_s0", {}),
                       ("ar_d64_1e11_s0", {"train_split": "test"})):   # a judge: trained on test
        shutil.copytree(RUNS / "scaling" / name, runs / name)
        cfg = yaml.safe_load((runs / name / "config.yaml").read_text())
        cfg["train"].update(edit)
        (runs / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    table = load.load_runs(str(runs / "*"))
    assert table.set_index("run_name")["setting"].to_dict() == {
        "ar_d32_1e11_s0": "StdlibCode, byte, seq 64", "mdlm_d32_1e11_s0": "StdlibCode, byte, seq 128",
        "ar_d64_1e11_s0": "StdlibCode, byte, seq 128, trained on test"}
    assert set(scaling.budget_points(table)["run_name"]) == {"ar_d32_1e11_s0", "mdlm_d32_1e11_s0"}
    md = build_report(str(runs / "*"), tmp_path / "out").read_text()
    assert "_Not computed" in md and "seq 64: ar" in md and "seq 128: mdlm" in md
    assert "### StdlibCode, byte, seq 64" in md and "isoflop_2.png" in _images(md)
