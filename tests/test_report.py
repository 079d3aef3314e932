"""The analysis side of the comparison on the committed synthetic run folders
(``tests/fixtures/run_folders/``, written by ``tests/fixtures/make_runs.py``): the tidy table and
its labels (from current- and old-format run files alike), the power-law fit, the headline ratio,
the generation-benchmark summary, and the report with every section and figure, written where
JAX and the training package cannot be imported. Missing or half-written inputs are labelled
gaps, never a crash. Nothing is trained or run here."""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import FIXTURES, REPO

from analysis import edits, fits, labels, load, speed, table
from analysis.context import build_context
from analysis.gen_summary import format_summary, summarize
from analysis.report import build_report

RUNS = FIXTURES / "run_folders"
N_RUNS = 30  # 18 scaling + 2 second seeds + 1 extra budget + half + no-eval + unknown + 6 repetition

FIGURES = ("learning_curves.png", "bpb_vs_tokens.png", "bpb_vs_flops.png", "isoflop.png", "scaling.png",
           "repetition.png", "repetition_compute.png", "edits_vs_diff_size.png",
           "edits_latency_vs_function_length.png", "edits_exact_by_kind.png", "edits_exact_vs_latency.png")
BENCH_FIGURES = ("_quality_vs_nfe.png", "_quality_vs_latency.png", "_throughput_vs_batch.png",
                 "_latency_vs_length.png", "_step_over_forward.png")
# runs written before meta lines carried objective_label / bound (make_runs.py's old format)
OLD_FORMAT = ("ar_d32_1e11_s0", "mdlm_d32_1e11_s0", "bd3lm_d32_1e11_s0", "half_mdlm", "mdlm_e4")
NEW_FORMAT = ("ar_d64_1e11_s0", "mdlm_d64_1e11_s0", "bd3lm_d64_1e11_s0", "bd3lm_d32_5e11_s0", "ar_e4")
BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax", "orbax.checkpoint", "sandbox")


def _images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def _final(df: pd.DataFrame, name: str) -> pd.Series:
    rows = df[(df["run_name"] == name) & df["final"]]
    assert len(rows) == 1, name
    return rows.iloc[0]


def _section(md: str, heading: str) -> str:
    """The body of the section whose heading starts with ``heading`` (up to the next ``## ``)."""
    return md.split("\n" + heading)[1].split("\n", 1)[1].split("\n## ")[0]


def _run_dir(name: str):
    return next(p for p in (RUNS / "scaling" / name, RUNS / "repetition" / name) if p.exists())


def _copy_runs(dest, *names):
    for name in names:
        shutil.copytree(_run_dir(name), dest / name)
    return dest


def _strip_new_fields(run_dir) -> None:
    """Rewrite a run's meta line as it was before objective_label / bound existed."""
    p = run_dir / "metrics.jsonl"
    out = []
    for line in p.read_text().splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        if rec.get("kind") == "meta":
            rec.pop("objective_label", None)
            rec.pop("bound", None)
        out.append(json.dumps(rec) + "\n")
    p.write_text("".join(out))


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    """``python -m analysis.report`` on the whole fixture, in a process where importing JAX,
    Flax, Optax, Orbax or the training package fails: (out dir, report text)."""
    out = tmp_path_factory.mktemp("report")
    argv = ["analysis.report", f"runs_glob={RUNS}/**", f"out={out}", "title=Fixture"]
    code = (f"import runpy, sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); sys.argv = {argv!r}; "
            "runpy.run_module('analysis.report', run_name='__main__', alter_sys=True)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out / 'report.md'}"
    return out, (out / "report.md").read_text()


# --- the tidy table ------------------------------------------------------------------------------
def test_loader_yields_the_tidy_table():
    df = table.load_runs(str(RUNS / "**"))
    assert list(df.columns[:len(table.TABLE_COLUMNS)]) == list(table.TABLE_COLUMNS)
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

    fresh = _final(df, "noeval_mdlm")                       # no evaluation yet: its bound from the meta line
    assert fresh["known_objective"] and not fresh["finished"] and fresh["bound"] == "upper"
    assert fresh["step"] == 1 and math.isnan(fresh["val_bpb"])
    assert fresh["problems"] == "unfinished: no evaluation yet of 652"

    unk = _final(df, "unknown_sedd")                        # no recorded bound: loads, flagged, never dropped
    assert not unk["known_objective"] and unk["finished"] and "unknown objective 'sedd'" in unk["problems"]
    assert pd.isna(unk["bound"])

    rep = _final(df, "ar_e16")
    assert rep["unique_tokens"] == 102_400 and rep["epochs"] == pytest.approx(16.0)
    assert math.isnan(rep["budget"]) and rep["total_steps"] == 1600
    mid = df[(df["run_name"] == "ar_e16") & ~df["final"]].iloc[0]
    assert mid["epochs"] == pytest.approx(8.0)
    assert df[df["run_name"].str.contains("_s0")]["epochs"].isna().all()  # no unique tokens recorded

    # short setting labels: config name (or snake-case class), non-default scalar options only
    assert set(df["setting"]) == {"stdlib_code, bytes, seq 128", "stdlib_code max_files=12, bytes, seq 128"}

    # the raw records (report sections use them too)
    runs = load.find_runs(str(RUNS / "**"))
    assert len(runs) == N_RUNS
    m = load.load_metrics(runs)
    fe = load.final_evals(m)
    assert len(fe) == N_RUNS - 1 and set(fe["objective"]) == {"ar", "mdlm", "bd3lm(16)", "sedd"}


def test_old_and_new_run_files_give_the_same_labels(tmp_path):
    df = table.load_runs(str(RUNS / "**")).set_index("run_name")
    for name in NEW_FORMAT:                                 # the fixture holds both formats
        meta = load.read_jsonl(_run_dir(name) / "metrics.jsonl")[0]
        assert meta["objective_label"] and meta["bound"] in ("exact", "upper"), name
    for name in OLD_FORMAT:
        meta = load.read_jsonl(_run_dir(name) / "metrics.jsonl")[0]
        assert "objective_label" not in meta and "bound" not in meta, name
    for old, new in (("ar_d32_1e11_s0", "ar_d64_1e11_s0"), ("mdlm_d32_1e11_s0", "mdlm_d64_1e11_s0"),
                     ("bd3lm_d32_1e11_s0", "bd3lm_d64_1e11_s0")):
        assert df.loc[old].iloc[-1][["objective", "bound"]].tolist() == \
               df.loc[new].iloc[-1][["objective", "bound"]].tolist(), (old, new)

    # the same runs with the new fields stripped load the same labels and bounds
    new = _copy_runs(tmp_path / "new", *NEW_FORMAT)
    old = _copy_runs(tmp_path / "old", *NEW_FORMAT)
    for name in NEW_FORMAT:
        _strip_new_fields(old / name)
    cols = ["run_name", "objective", "bound", "known_objective", "setting", "problems"]
    a, b = table.load_runs(str(new / "*")), table.load_runs(str(old / "*"))
    assert a[cols].values.tolist() == b[cols].values.tolist()
    assert set(a["objective"]) == {"ar", "mdlm", "bd3lm(16)"} and a["known_objective"].all()

    # the meta line's label wins over the config's name, and its bound over nothing
    p = new / "bd3lm_d64_1e11_s0" / "metrics.jsonl"
    lines = p.read_text().splitlines()
    meta = json.loads(lines[0]) | {"objective_label": "bd3lm(16)-ema", "bound": "upper"}
    evals = [json.dumps({k: v for k, v in json.loads(x).items() if k != "bound"}) for x in lines[1:]]
    p.write_text("\n".join([json.dumps(meta), *evals]) + "\n")
    r = _final(table.load_runs([new / "bd3lm_d64_1e11_s0"]), "bd3lm_d64_1e11_s0")
    assert r["objective"] == "bd3lm(16)-ema" and r["bound"] == "upper" and r["known_objective"]
    assert labels.objective_label({"objective": {"name": "bd3lm", "block_size": 4}}) == "bd3lm(4)"
    assert labels.objective_label({"objective": {"name": "x", "block_size": None}}, {}) == "x"
    assert labels.objective_label({}, {"objective": "mdlm"}) == "mdlm"
    assert labels.run_bound({}, [{"bound": "exact"}]) == "exact" and labels.run_bound({}, [{}]) is None


def test_objective_order_and_colours_come_from_the_bounds():
    bounds = {"mdlm": "upper", "bd3lm(16)": "upper", "sedd": None, "bd3lm(4)": "upper", "ar": "exact",
              "ar2": "exact"}
    assert labels.objective_order(bounds) == ["ar", "ar2", "bd3lm(4)", "bd3lm(16)", "mdlm", "sedd"]
    assert labels.reference_objective(bounds) == "ar"
    note = labels.bound_note(bounds)
    assert note.startswith("ar, ar2 figures are exact")
    assert "**bd3lm(4), bd3lm(16), mdlm figures are upper" in note
    assert "sedd" not in note
    ctx = build_context(str(RUNS / "scaling" / "*"), REPO / "unused")
    assert ctx.order == ["ar", "bd3lm(16)", "mdlm", "sedd"] and ctx.reference == "ar"
    assert ctx.bounds == {"ar": "exact", "bd3lm(16)": "upper", "mdlm": "upper", "sedd": None}
    assert len(set(ctx.colors.values())) == len(ctx.order)    # one palette colour each, fixed per report


def test_setting_labels_are_short(tmp_path, monkeypatch):
    conf = tmp_path / "conf"                               # the config groups the defaults come from
    for group, name, text in (("data", "stdlib_code", "_target_: sandbox.data.corpora.StdlibCode\n"
                                                      "max_files: null\nval_fraction: 0.05\n"),
                              ("data", "stdlib_edits", "_target_: sandbox.tasks.edits.task.EditsTask\n"
                                                       "format: whole\nprompt_len: 128\n"),
                              ("tokenizer", "bytes", "_target_: sandbox.data.tokenizers.ByteTokenizer\n"),
                              ("tokenizer", "bpe", "_target_: sandbox.data.tokenizers.BPETokenizer\n"
                                                   "vocab_size: 2048\nmin_frequency: 2\n")):
        (conf / group).mkdir(parents=True, exist_ok=True)
        (conf / group / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(labels, "CONF_DIR", conf)
    labels.group_defaults.cache_clear()
    lab = labels.setting_label
    assert lab({"data": {"_target_": "sandbox.data.corpora.StdlibCode", "max_files": None},
                "tokenizer": {"_target_": "sandbox.data.tokenizers.ByteTokenizer"},
                "train": {"seq_len": 256}}) == "stdlib_code, bytes, seq 256"
    edits_cfg = {"data": {"_target_": "sandbox.tasks.edits.task.EditsTask", "name": "stdlib_edits",
                          "format": "udiff", "tiers": ["micro"], "prompt_len": 128,
                          "source": {"_target_": "sandbox.tasks.edits.StdlibEdits", "seed": 0}},
                 "tokenizer": {"_target_": "sandbox.data.tokenizers.BPETokenizer", "vocab_size": 2048,
                               "min_frequency": 2},
                 "train": {"seq_len": 256, "train_split": "test"}}
    assert lab(edits_cfg) == "stdlib_edits format=udiff, bpe 2048, seq 256, trained on test"
    # no name key and no config group for the class: the class name in snake case
    assert lab({"data": {"_target_": "my.pkg.MyCorpusV2", "path": "x"}, "train": {"seq_len": 8}}) \
        == "my_corpus_v2 path=x, ?, seq 8"
    # two settings that differ only in an option the label leaves out get told apart
    a = dict(edits_cfg, data={**edits_cfg["data"], "tiers": ["micro"]})
    b = dict(edits_cfg, data={**edits_cfg["data"], "tiers": ["micro", "small"]})
    keys = {labels.setting_key(c): lab(c) for c in (a, b)}
    assert len(set(keys.values())) == 1 and len(set(labels.disambiguate(keys).values())) == 2
    assert '["micro", "small"]' in labels.disambiguate(keys)[labels.setting_key(b)]
    # without the config groups: the class name, and every scalar option that is set
    monkeypatch.setattr(labels, "CONF_DIR", tmp_path / "nowhere")
    labels.group_defaults.cache_clear()
    assert lab({"data": {"_target_": "sandbox.data.corpora.StdlibCode", "max_files": None,
                         "val_fraction": 0.1},
                "tokenizer": {"_target_": "sandbox.data.tokenizers.ByteTokenizer"},
                "train": {"seq_len": 256}}) == "stdlib_code val_fraction=0.1, byte, seq 256"
    labels.group_defaults.cache_clear()


def test_loader_never_crashes_on_broken_runs(tmp_path):
    (tmp_path / "noeval").mkdir()           # no config, one train line, then garbage
    (tmp_path / "noeval" / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 5, "tokens": 50, "flops": 5e6}) + "\n[1, 2]\nnot json\n{\"kind")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "empty" / "config.yaml").write_text(": : not yaml : [")
    df = table.load_runs(str(tmp_path / "*"))
    assert len(df) == 2 and not df["finished"].any() and not df["known_objective"].any()
    ne = _final(df, "noeval")
    assert ne["objective"] == "?" and ne["step"] == 5 and ne["tokens"] == 50 and math.isnan(ne["val_bpb"])
    assert "no readable config.yaml" in ne["problems"] and "no evaluation yet" in ne["problems"]
    assert table.load_runs([]).empty


# --- fits ----------------------------------------------------------------------------------------------
def test_power_law_fit_recovers_known_parameters():
    c = np.geomspace(1e12, 1e15, 6)
    exact = fits.fit_power_law(c, 50.0 * c ** -0.08)
    assert exact["a"] == pytest.approx(50.0, rel=1e-9) and exact["b"] == pytest.approx(0.08, rel=1e-9)
    assert exact["b_lo"] == pytest.approx(0.08, abs=1e-9) and exact["dof"] == 4

    rng = np.random.default_rng(0)
    hits, widths = 0, []
    for _ in range(40):                     # ~95% of the intervals cover the true exponent
        cc = np.repeat(np.geomspace(1e12, 1e15, 4), 2)
        noisy = 50.0 * cc ** -0.08 * np.exp(rng.normal(0, 0.01, len(cc)))
        f = fits.fit_power_law(cc, noisy)
        assert f["b"] == pytest.approx(0.08, abs=0.01) and f["a"] == pytest.approx(50.0, rel=0.5)
        hits += f["b_lo"] <= 0.08 <= f["b_hi"] and f["a_lo"] <= 50.0 <= f["a_hi"]
        widths.append(f["b_hi"] - f["b_lo"])
    assert hits >= 34 and 0 < np.median(widths) < 0.02
    two = fits.fit_power_law([1e12, 1e13], [3.0, 2.5])
    assert two["dof"] == 0 and math.isnan(two["b_lo"])
    assert two["b"] == pytest.approx(math.log(3.0 / 2.5) / math.log(10))
    assert fits.fit_power_law([1e12, 1e12], [3.0, 2.9]) is None
    assert fits.fit_power_law([1e12], [3.0]) is None


def test_headline_matches_budgets_and_interpolates_the_reference():
    tab = table.load_runs(str(RUNS / "**"))
    pts = fits.budget_points(tab)
    assert not pts["run_name"].isin(["half_mdlm", "noeval_mdlm", "unknown_sedd"]).any()
    assert not pts["run_name"].str.endswith(("_e1", "_e4", "_e16")).any()   # step-given runs stay out
    groups = fits.grouped(pts)
    front = fits.frontier(groups)
    fit_map = fits.fit_all(pts, front)
    assert set(fit_map) == {"ar", "mdlm", "bd3lm(16)"}
    assert fit_map["ar"]["n"] == 4                                           # 3 budgets, 2 seeds at one
    two_seeds = groups[(groups["objective"] == "ar") & (groups["params"] == 80_000)
                       & (groups["cgroup"] == 3e11)]
    assert two_seeds.iloc[0]["n_seeds"] == 2 and two_seeds.iloc[0]["bpb_se"] == pytest.approx(0.01)
    h = fits.headline(pts, front, fit_map)                 # reference: the exact objective
    assert len(h) == 7 and set(h["objective"]) == {"mdlm", "bd3lm(16)"} and set(h["reference"]) == {"ar"}
    assert h["objective"].tolist()[:2] == ["bd3lm(16)", "mdlm"]   # report order within a budget
    same = h[h["ref_how"] == "same budget"]
    assert len(same) == 6
    r = same[(same["objective"] == "mdlm") & (same["budget"] == 1e12)].iloc[0]
    assert r["ratio"] == pytest.approx(2 ** (r["bpb"] - r["ref_bpb"]))
    assert r["ratio_lo"] < r["ratio"] < r["ratio_hi"]
    inter = h[h["ref_how"].str.startswith("interpolated")].iloc[0]       # bd3lm at 5e11: no AR run there
    assert inter["budget"] == 5e11
    ar = front[front["objective"] == "ar"].sort_values("flops")
    lo, hi = ar.iloc[1], ar.iloc[2]                                      # 3e11 and 1e12
    t = (math.log(inter["flops"]) - math.log(lo["flops"])) / (math.log(hi["flops"]) - math.log(lo["flops"]))
    expect = math.exp((1 - t) * math.log(lo["bpb_mean"]) + t * math.log(hi["bpb_mean"]))
    assert inter["ref_bpb"] == pytest.approx(expect, rel=1e-9)
    ss = fits.same_size_ratios(groups)
    assert len(ss) == 12 and set(ss["reference"]) == {"ar"}


# --- the report ---------------------------------------------------------------------------------------------
def test_report_on_the_fixture_writes_every_figure_and_is_idempotent(fixture_report):
    out, md = fixture_report
    assert "Could not be produced" not in md, md
    imgs = _images(md)
    for name in FIGURES:
        assert name in imgs, (name, imgs)
    for name in BENCH_FIGURES:
        assert any(i.endswith(name) for i in imgs), (name, imgs)
    for i in imgs:
        assert (out / i).is_file() and (out / i).stat().st_size > 1000, i
    for heading in ("## Headline", "## Held-out bits per byte", "## Learning curves",
                    "## Held-out bits per byte vs tokens and FLOPs", "## IsoFLOP curves",
                    "## Data repetition", "## Sample quality", "## Samples and generation speed",
                    "## Code edits", "## Runs"):
        assert heading in md, heading
    intro = md.split("## Headline")[0]
    assert "ar figures are exact" in intro and "**bd3lm(16), mdlm figures are upper bounds**" in intro
    head = _section(md, "## Headline")
    assert "upper bound" in head and "per byte" in head
    for ref in ("~1.32", "~1.21", "~1.18", "~1.11", "OpenWebText", "LM1B", "text8"):
        assert ref in head, ref
    assert "| 5e+11 | bd3lm(16) |" in head and "interpolated (log-log)" in head and "sedd" not in head
    assert "| ar | 3 | 4 |" in md                       # fit table: 3 budgets, 4 points
    assert "Student-t" in md and "L = a * C^(-b)" in md
    assert "Below ar's exact figure at 16 epochs (mdlm)." in md
    # the fixture's mdlm - ar: +0.2, +0.3, -0.6 bits at 1, 4, 16 epochs: 2^(2 + 2 * 0.3 / 0.9) = 6.35
    assert "| d64 (0.08M) | 102,400 | 6.35 [6.16, 6.54] |" in md and "repetition_compute.png" in _images(md)
    assert "(stdlib_code max_files=12, bytes, seq 128):" in md  # short setting label
    assert "StdlibCode" not in md and "_target_" not in md and "max_files=None" not in md
    assert "| ar/d64 whole ar temperature=0.0 | 40 | 50.0% |" in md
    # latency per diff bin against the exact-likelihood series of the same format (whole for inplace)
    assert ("| mdlm/d64 inplace mdm_threshold steps=16 | ar/d64 whole ar temperature=0.0 | "
            "0.25 (36.0% / 60.0%) | 0.25 (30.0% / 50.0%) | 0.25 (21.0% / 35.0%) | "
            "0.25 (12.0% / 20.0%) |") in md
    runs = _section(md, "## Runs")
    assert "`half_mdlm`" in runs and "`unknown_sedd`" in runs and "`noeval_mdlm`" in runs
    assert "27 finished runs" in runs and "30 run folders" in runs

    # the generation benchmark: the complete one shown, the older interrupted one only counted
    assert "gen-20260102-000000` (complete)" in md and "1 older benchmark folder" in md
    assert "gen-perplexity under the in-sandbox judge" in md  # quality axis = gen_ppl without judge_bpb
    assert "(a) time per model call" in md and "(c) mdm_threshold against AR" in md
    # a benchmark from before the work per forward was recorded: the roofline part says so, guesses nothing
    assert "#### Both worlds" in md and "12 point(s) skipped by the roofline model" in md
    assert "No point records the work per forward" in md and "h200 (roofline)" not in md
    # the scaling grid: every fixture optimum sits at the grid's edge (two sizes), so no size law;
    # the compute multiplier comes from the diffusion fits
    scaling = _section(md, "## IsoFLOP")
    assert "| edge (2 sizes) |" in scaling and "| interior |" not in scaling
    assert "No fit of the optimal size against compute" in scaling
    assert "| 1e+11 | mdlm | 3.523 | 2.03e+11 | 2.02 [1.84, 2.22] | interpolated |" in scaling
    assert "| noeval_mdlm |" not in _section(md, "## Held-out bits per byte\n")  # no eval yet: not in it
    assert "| half_mdlm |" in _section(md, "## Held-out bits per byte\n")
    # sample-quality table from eval_quality.jsonl: samples next to real text
    assert "4.100 (4.400)" in _section(md, "## Sample quality")
    assert "```x" not in md  # examples cannot break out of their code block

    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    again = build_report(f"{RUNS}/**", out, title="Fixture").read_text()
    assert again == md                                  # idempotent: same report, same figures
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == pngs


def test_the_benchmark_summary_in_the_report_is_the_benchmarks_own(fixture_report):
    _, md = fixture_report
    bench = load.load_bench_gen(RUNS / "bench" / "gen-20260102-000000" / "results.jsonl")
    refs = {(x["family"], x["length"], x["prompt_len"]): x["quality"] for x in bench["reference"]}
    text = format_summary(summarize(bench["rows"], refs), bench["rows"], [], refs, ["ar", "mdm"])
    assert "```\n" + text.strip() + "\n```" in md
    assert "x1.50 from 16 to 32 (lengths x2); target met" in text


def test_edit_bins_come_from_the_files_with_a_fallback_for_old_ones(tmp_path):
    new_lines = load.read_jsonl(RUNS / "scaling" / "ar_d64_1e12_s0" / "eval_edits.jsonl")
    old_lines = load.read_jsonl(RUNS / "scaling" / "mdlm_d64_1e12_s0" / "eval_edits.jsonl")
    assert all("diff_bins" in x for x in new_lines if x["kind"] == "edits")
    assert all("diff_bin" in x for x in new_lines if x["kind"] == "edits_latency")
    assert not any("diff_bin" in x or "diff_bins" in x for x in old_lines)
    s, lat = edits.load_edits([RUNS / "scaling" / "ar_d64_1e12_s0", RUNS / "scaling" / "mdlm_d64_1e12_s0"])
    assert edits.diff_bins(s) == ["1", "2-4", "5-16", "17+"]
    bins = ["1", "2-4", "5-16", "17+"]                     # diff tokens 1, 3, 9, 20 in each series
    assert lat.groupby("series", sort=False)["bin"].apply(list).tolist() == [bins, bins, bins]
    assert lat["objective"].tolist() == ["ar"] * 8 + ["mdlm"] * 4
    assert set(s["bound"]) == {"exact", "upper"}

    # the evaluator's bins are used as written, even where the fallback would bin otherwise
    run = _copy_runs(tmp_path, "ar_d64_1e12_s0") / "ar_d64_1e12_s0"
    rows = [dict(x, diff_bins=["1-2", "3+"], by_diff_size={"1-2": {"n": 5, "exact_match": 0.25},
                                                           "3+": {"n": 5, "exact_match": 0.75}})
            if x["kind"] == "edits" else dict(x, diff_bin="1-2" if x["diff_tokens"] <= 3 else "3+")
            for x in new_lines]
    (run / "eval_edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s, lat = edits.load_edits([run])
    assert edits.diff_bins(s) == ["1-2", "3+"] and lat["bin"].tolist()[:4] == ["1-2", "1-2", "3+", "3+"]
    assert s["em_1-2"].tolist() == [0.25, 0.25]
    md = build_report(str(tmp_path / "*"), tmp_path / "out").read_text()
    assert "| EM 1-2 | EM 3+ |" in md and "EM 17+" not in md


def test_missing_inputs_give_labelled_gaps(tmp_path):
    runs = _copy_runs(tmp_path / "runs", "half_mdlm", "unknown_sedd")   # nothing finished with a bound
    md = build_report(str(runs / "*"), tmp_path / "a").read_text()
    assert "Could not be produced" not in md
    assert "_Not computed: needs finished runs of an exact-likelihood objective (AR) and of another" in md
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

    # a run with no evaluation yet and nothing else: every section one labelled line
    fresh = _copy_runs(tmp_path / "runs3", "noeval_mdlm")
    md = build_report(str(fresh / "*"), tmp_path / "c").read_text()
    assert "Could not be produced" not in md
    assert "_No evaluation records found" in md
    assert "_No sample-quality evaluations" in md
    assert "_No generation benchmark under this pattern" in md
    assert "_No evaluations of a run with a recorded bound" in md
    assert _images(md) == ["learning_curves.png"]       # the train loss, and nothing empty


def test_sections_with_nothing_to_show_are_one_line(tmp_path):
    # one budget per objective: IsoFLOP drawn, no scaling figure from a single point per objective
    runs = _copy_runs(tmp_path / "runs", "ar_d32_1e11_s0", "ar_d64_1e11_s0", "mdlm_d32_1e11_s0")
    md = build_report(str(runs / "*"), tmp_path / "out").read_text()
    scaling = _section(md, "## IsoFLOP curves")
    assert "isoflop.png" in _images(scaling) and "scaling.png" not in md
    assert "_No power-law fit for ar, mdlm: a fit needs finished runs at two or more budgets._" in scaling
    assert "| ar | 1e+11 | d32 (0.02M) |" in scaling     # the compute-optimal points still listed
    rep = _section(md, "## Data repetition")
    assert rep.strip().count("\n") == 0 and rep.strip().startswith("_No repetition runs")
    for heading in ("## Code edits", "## Samples and generation speed"):
        body = _section(md, heading).strip()
        assert body.startswith("_") and body.endswith("_") and "\n" not in body, heading
    assert "Could not be produced" not in md


def test_only_runs_of_one_setting_are_compared(tmp_path):
    runs = tmp_path / "runs"
    for name, edit in (("ar_d32_1e11_s0", {"seq_len": 64}), ("mdlm_d32_1e11_s0", {}),
                       ("ar_d64_1e11_s0", {"train_split": "test"})):   # a judge: trained on test
        shutil.copytree(RUNS / "scaling" / name, runs / name)
        cfg = yaml.safe_load((runs / name / "config.yaml").read_text())
        cfg["train"].update(edit)
        (runs / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    tab = table.load_runs(str(runs / "*"))
    assert tab.set_index("run_name")["setting"].to_dict() == {
        "ar_d32_1e11_s0": "stdlib_code, bytes, seq 64", "mdlm_d32_1e11_s0": "stdlib_code, bytes, seq 128",
        "ar_d64_1e11_s0": "stdlib_code, bytes, seq 128, trained on test"}
    assert set(fits.budget_points(tab)["run_name"]) == {"ar_d32_1e11_s0", "mdlm_d32_1e11_s0"}
    md = build_report(str(runs / "*"), tmp_path / "out").read_text()
    assert "_Not computed" in md and "seq 64: ar" in md and "seq 128: mdlm" in md
    assert "### stdlib_code, bytes, seq 64" in md and "isoflop_2.png" in _images(md)


def test_bench_without_quality_or_finish(tmp_path):
    src = RUNS / "bench" / "gen-20260101-000000"
    d = tmp_path / "runs" / "bench" / "gen-20260103-000000"
    d.mkdir(parents=True)
    keep = [r for r in load.read_jsonl(src / "results.jsonl")
            if r["kind"] not in ("gen_quality", "reference")]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    md = build_report(str(tmp_path / "runs" / "**"), tmp_path / "out").read_text()
    assert "interrupted" in md
    assert "Quality vs NFE / latency: not drawn (no quality figures" in md
    assert "the benchmark ran without `--quality`" in md
    for i in _images(md):
        assert (tmp_path / "out" / i).is_file()


def test_no_judge_no_ranking_and_pareto(tmp_path):
    """Without a judge nothing ranks the samples (the entropy distance put gibberish ahead of AR):
    no quality axis, and the report says why; judge bits per byte wins over gen-ppl; samples far
    below real text's entropy are marked degenerate and left off the fronts."""
    d = tmp_path / "runs" / "bench" / "gen-20260104-000000"
    shutil.copytree(RUNS / "bench" / "gen-20260102-000000", d)
    text = (d / "results.jsonl").read_text()
    (d / "results.jsonl").write_text(text.replace('"gen_ppl": ', '"gen_ppl_x": '))
    bench = load.load_bench_gen(d / "results.jsonl")
    assert all(r["quality"] for r in bench["rows"])  # merged from the gen_quality rows
    vals, label = speed.quality_axis(bench["rows"])
    assert vals is None and "gibberish" in label and "--text-judge" in label
    md = build_report(str(tmp_path / "runs" / "**"), tmp_path / "out").read_text()
    assert "Quality vs NFE / latency: not drawn (no judge scored the samples" in md

    bench = load.load_bench_gen(RUNS / "bench" / "gen-20260102-000000" / "results.jsonl")
    for i, r in enumerate(bench["rows"]):
        r["quality"] = {**r["quality"], "judge_bpb": 2.0 + i}
    vals, label = speed.quality_axis(bench["rows"])
    assert "judge bits per byte" in label and vals[:2] == [2.0, 3.0]
    refs = {(x["family"], x["length"], x.get("prompt_len", 0)): x["quality"] for x in bench["reference"]}
    rows = [r for r in bench["rows"] if (r["family"], r["length"], r.get("prompt_len", 0)) in refs][:2]
    for r, share in zip(rows, (0.5, 0.9)):
        r["quality"]["unigram_entropy"] = share * refs[(r["family"], r["length"], r.get("prompt_len", 0))][
            "unigram_entropy"]
    bad = speed.degenerate(rows, bench["reference"])
    assert bad == [True, False]
    assert speed.pareto_front([(1, 5), (2, 3), (3, 4), (4, 1)]) == [(1, 5), (2, 3), (4, 1)]
    assert load.find_bench_gen(str(tmp_path / "runs" / "bench")) == [d / "results.jsonl"]


def test_report_with_nothing_is_one_line(tmp_path, capsys):
    from analysis.report import main

    with pytest.raises(SystemExit) as e:
        main([f"runs_glob={tmp_path}/nothing/*", f"out={tmp_path}/out"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["nonsense"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument 'nonsense': expected key=value")


def test_analysis_imports_nothing_from_the_training_side():
    """Every module under analysis/ imports neither the training package nor JAX and friends:
    the report runs where only numpy, pandas, matplotlib and PyYAML are installed."""
    banned = {"sandbox", "jax", "jaxlib", "flax", "optax", "orbax"}
    files = sorted((REPO / "analysis").rglob("*.py"))
    assert len(files) > 10
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for n in names:
                assert n.split(".")[0] not in banned, f"{f.relative_to(REPO)} imports {n}"


def test_quality_frontier_over_temperatures(tmp_path):
    """Judged eval_quality lines at several temperatures become one frontier line per run and
    sampler (judge bits per byte against entropy), held-out text a star; without judged lines
    the report says how to get it instead of drawing."""
    from analysis.sections import quality as quality_section

    run = tmp_path / "runs" / "ar_d32_1e11_s0"
    shutil.copytree(RUNS / "scaling" / "ar_d32_1e11_s0", run)
    base = json.loads((run / "eval_quality.jsonl").read_text().splitlines()[0])
    lines = []
    for t, h, bpb in ((0.8, 3.6, 2.1), (1.0, 4.1, 2.6), (1.2, 4.6, 3.4)):
        rec = json.loads(json.dumps(base))
        rec["settings"]["temperature"], rec["temperature"] = t, t
        rec["samples"].update(unigram_entropy=h, judge_bpb=bpb, judge_bpb_stderr=0.1, jsd_2=0.2,
                              copied_32=0.05)
        rec["reference"].update(judge_bpb=1.7, jsd_2=0.1, copied_32=0.04)
        lines.append(json.dumps(rec))
    (run / "eval_quality.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "out").mkdir()
    ctx = build_context(str(tmp_path / "runs" / "*"), tmp_path / "out")
    md = quality_section.section(ctx)
    assert "![quality_frontier.png](quality_frontier.png)" in md
    assert (tmp_path / "out" / "quality_frontier.png").is_file()
    assert "2.10 (1.70)" in md and "0.200 (0.100)" in md and "0.050 (0.040)" in md
    q = load.load_quality(ctx.runs)
    assert len({quality_section._curve_key(r) for _, r in q.iterrows()}) == 1  # one line over T
    (run / "eval_quality.jsonl").write_text(json.dumps(base) + "\n")
    md = quality_section.section(build_context(str(tmp_path / "runs" / "*"), tmp_path / "out"))
    assert "Generative frontier: not drawn" in md and "judge=smollm2" in md
