"""The generation benchmark on very small random models: every row complete and sane, the
results folder written and readable by analysis.load, the summary figures computed, and
one-line errors (exit 2, nothing written) for bad flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis import gen_summary, roofline
from analysis.gen_summary import format_summary, summarize
from analysis.load import find_bench_gen, load_bench_gen
from sandbox.bench import cli, gen_plan, gen_time

SMALL = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2"]
OVR = [a for o in SMALL for a in ("-o", o)]
FIELDS = ("sampler", "label", "settings", "batch", "length", "prompt_len", "generated", "nfe", "latency_s",
          "latency_per_seq_s", "latency_per_token_s", "tokens_per_s", "tokens_per_forward", "forward_s",
          "step_over_forward", "compile_s", "timed_calls", "forward_shape", "sweeps")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    import tiny_gguf

    out = tmp_path_factory.mktemp("bench_gen")
    judge = tiny_gguf.write(out / "judge.gguf")  # --text-judge: judge bits per byte for every point
    r = cli.main(["gen", "--samplers", "ar,ar_nocache,mdm_threshold,mdm_ancestral", "--lengths", "8,16",
                    "--length", "16", "--batches", "1,2", "--taus", "0.9", "--steps-div", "2", "--blocks", "",
                    "--nocache-tokens", "4", "--repeats", "2", "--max-seconds", "0", "--fwd-repeats", "1",
                    "--quality", "--quality-samples", "3", "--text-judge", f"gguf:{judge}", "--out", str(out),
                    *OVR])
    return r, out


def test_rows_complete_and_sane(result, capsys):
    r, _ = result
    rows = r["rows"]
    labels = {x["label"] for x in rows}
    assert labels == {"ar", "ar_nocache", "mdm_threshold", "mdm_ancestral"}
    for row in rows:
        for k in FIELDS:
            assert k in row, k
        for k in ("nfe", "latency_s", "tokens_per_s", "forward_s", "step_over_forward", "compile_s"):
            assert isinstance(row[k], (int, float)) and math.isfinite(row[k]) and row[k] > 0, (k, row)
        gen = row["length"] - row["prompt_len"]
        assert row["generated"] == gen
        assert row["tokens_per_forward"] == pytest.approx(gen / row["nfe"])
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * gen / row["latency_s"])
        assert row["latency_per_seq_s"] == pytest.approx(row["latency_s"] / row["batch"])
        assert row["step_over_forward"] == pytest.approx(row["time_per_nfe_s"] / row["forward_s"])
        assert row["timed_calls"] == 1  # --max-seconds 0: one timed call after the warm-up
        if row["label"].startswith("ar"):
            assert row["nfe"] == gen and row["forward_shape"] == [row["batch"], row["length"] + 1]
        else:
            assert 1 <= row["nfe"] <= gen and row["forward_shape"] == [row["batch"], row["length"]]
        if row["sampler"] == "mdm_ancestral":
            assert row["nfe"] <= row["settings"]["steps"]
        assert row["quality"]["n_samples"] == 3 and row["quality"]["unigram_entropy"] > 0
        assert math.isfinite(row["quality"]["judge_bpb"]) and row["quality"]["judge_bpb"] > 0
    nocache = [x for x in rows if x["label"] == "ar_nocache"]
    assert {(x["length"], x["prompt_len"]) for x in nocache} == {(8, 4), (16, 12)}
    # a point in two sweeps is timed once
    assert any(set(x["sweeps"]) == {"length", "batch"} for x in rows if x["label"] == "ar")


def test_summary_and_files(result):
    r, out = result
    s = r["summary"]
    assert set(s["a"]) >= {"mdm_threshold", "mdm_ancestral", "ar_nocache"}
    assert s["b"]["ar"]["length_lo"] == 8 and s["b"]["ar"]["length_hi"] == 16 and s["b"]["ar"]["growth"] > 0
    assert set(s["c"]) == {"1", "2"} and s["c"]["1"]["ar"]
    assert s["c"]["1"]["threshold"][0]["speedup_vs_ar"] > 0
    paths = find_bench_gen(str(out / "*"))
    assert len(paths) == 1 and paths[0].parent == Path(r["dir"])
    d = paths[0].parent
    assert (d / "env.json").exists() and (d / "git.json").exists() and (d / "summary.json").exists()
    recs = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
    assert recs[0]["kind"] == "meta" and recs[0]["bench"] == "gen"
    assert recs[0]["random_weights"] == ["ar", "mdm"]
    assert sum(x["kind"] == "gen" for x in recs) == len(r["rows"])
    qrows = [x for x in recs if x["kind"] == "gen_quality"]
    assert qrows and all(x["examples"] for x in qrows)
    loaded = load_bench_gen(paths[0])
    assert loaded["complete"] and all(x["quality"] for x in loaded["rows"])


def test_rows_record_the_work_the_roofline_model_reads(result):
    r, out = result
    [d] = find_bench_gen(str(out / "*"))
    bench = load_bench_gen(d)
    probe = bench["probe"]
    assert probe["peak_gflops"] > 0 and set(probe["bandwidth_gbs"]) == {"ar", "mdm"}
    assert probe["draw_ns_per_logit"] > 0 and probe["draw_vocab"] > 0
    for row in bench["rows"]:
        w = row["work"]
        assert w["n_layers"] == 1 and all(p["flops"] > 0 and p["bytes"] > 0 for p in w["passes"])
        assert sum(p["count"] for p in w["passes"]) == pytest.approx(row["nfe"]), row["label"]
        if row["label"] == "ar":   # the prefill of BOS + prompt, then one-token steps
            assert w["passes"][0]["q"] == row["prompt_len"] + 1 and w["passes"][-1]["q"] == 1
        if row["family"] == "ar":  # every AR forward (cached or not) draws one token per row
            assert all(p["logits"] == p["batch"] * probe["draw_vocab"] for p in w["passes"])
        else:                      # a draw at every computed position
            assert all(p["logits"] == pytest.approx(p["batch"] * p["q"] * probe["draw_vocab"])
                       for p in w["passes"])
        assert row["forward1_loop_s"] > 0 and row["forward1_work"]["flops"] < row["forward_work"]["flops"]
        # a short forward is timed in a loop lasting ~20 ms (4 to 64 forwards), so the launch's share stays
        # small: the one-token loop's length follows from its single calls' median
        assert 4 <= row["forward_loop_n"] <= 64
        assert row["forward1_loop_n"] == min(64, max(4, math.ceil(0.02 / row["forward1_s"])))
    v = roofline.validate(bench["rows"], probe, "cpu")
    assert v["n"] == len(bench["rows"]) and math.isfinite(v["median_abs_err"])


def test_printed_table_and_summary(tmp_path, capsys):
    cli.main(["gen", "--samplers", "ar,mdm_threshold", "--lengths", "8", "--length", "8",
                "--batches", "1", "--taus", "0.5", "--blocks", "", "--repeats", "1", "--fwd-repeats", "1",
                "--out", str(tmp_path), *OVR])
    printed = capsys.readouterr().out
    for text in ("step/fwd", "tok/fwd", "Summary", "(a)", "(b)", "(c)", "weights are random"):
        assert text in printed, text


def test_summarize_growth_and_target():
    def row(label, length, per_token, ratio=1.0, family="ar"):
        return {"label": label, "sampler": "ar" if family == "ar" else label, "family": family, "batch": 1,
                "length": length, "prompt_len": 0, "sweeps": ["length"], "latency_per_token_s": per_token,
                "step_over_forward": ratio}

    rows = [row("ar", 64, 1e-3), row("ar", 512, 1.5e-3), row("ar_nocache", 64, 5e-3),
            row("ar_nocache", 512, 4e-2), row("mdm_ancestral", 64, 1, 1.05, "mdm"),
            row("mdm_ancestral", 512, 1, 1.30, "mdm")]
    s = summarize(rows)
    assert s["b"]["ar"]["growth"] == pytest.approx(1.5)
    assert s["b"]["ar_nocache"]["growth"] == pytest.approx(8.0)
    assert s["a"]["mdm_ancestral"]["within"] == 1 and s["a"]["mdm_ancestral"]["max"] == pytest.approx(1.3)
    text = format_summary(s, rows, [], {}, [])
    assert "target met" in text and "NOT met at 1 of 2" in text


@pytest.mark.parametrize("flags, first_words", [
    (["--lengths", "abc"], "error: --lengths: 'abc'"),
    (["--taus", "1.5"], "error: --taus/--tau: 1.5"),
    (["--samplers", "nope"], "error: --samplers: unknown 'nope'"),
    (["--batches", "0"], "error: --batches: 0"),
    (["--prompt-len", "200"], "error: --prompt-len 200"),
    (["--lengths", "4096"], "error: --lengths/--length: a"),
    (["--quick", "--demo"], "error: argument --demo"),
    (["--ar-run", "/nonexistent/run"], "error: --ar-run /nonexistent/run"),
    (["--repeats", "x"], "error: argument --repeats"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, flags, first_words):
    with pytest.raises(SystemExit) as e:
        cli.main(["gen", *flags, "--out", str(tmp_path), *OVR])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(first_words) and "\n" not in err, err
    assert not any(tmp_path.iterdir())  # nothing written for a bad flag


def test_bd3lm_points_time_block_diffusion_with_its_cache(tmp_path):
    r = cli.main(["gen", "--samplers", "bd3lm", "--lengths", "16", "--length", "16", "--batches", "1",
                    "--bd3lm-blocks", "4,8,32", "--length-div", "4", "--repeats", "1", "--max-seconds", "0",
                    "--fwd-repeats", "1", "--out", str(tmp_path), *OVR])
    rows = {x["settings"]["block_size"]: x for x in r["rows"]}
    assert set(rows) == {4, 8, 16}                   # 32 > the 16 generated tokens: not planned
    assert rows[16]["sweeps"] == ["batch"] and rows[4]["sweeps"] == ["block"]   # batches: block 16
    for bs, row in rows.items():
        steps = max(1, bs // 4)
        assert row["settings"]["inner"]["steps"] == steps
        assert row["nfe"] <= (16 // bs) * (steps + 1)   # per block: <= steps calls + one commit
        assert row["nfe"] >= 16 // bs + 1 and row["family"] == "bd3lm"


def test_block_sweep_times_the_approximate_caches_beside_none(tmp_path):
    r = cli.main(["gen", "--samplers", "mdm_threshold", "--lengths", "8", "--length", "8", "--batches", "1",
                  "--taus", "0.9", "--blocks", "4", "--caches", "prefix,dual,causal", "--repeats", "1",
                  "--max-seconds", "0", "--fwd-repeats", "1", "--out", str(tmp_path), *OVR])
    block = {x["settings"].get("cache", "none"): x for x in r["rows"] if "block" in x["sweeps"]}
    assert set(block) == {"none", "prefix", "dual", "causal"}
    assert block["causal"]["recomputed_tokens"] < block["none"]["recomputed_tokens"]
    assert "dual cache" in block["dual"]["settings_text"]
    for row in block.values():
        assert row["recomputed_tokens"] <= row["nfe"] * 8
    assert block["none"]["recomputed_tokens"] == block["none"]["nfe"] * 8
    # a random model reveals about one token a call: 4 calls a block, so a refresh pays
    assert block["dual"]["recomputed_tokens"] < block["none"]["recomputed_tokens"]
    with pytest.raises(SystemExit):
        cli.main(["gen", "--caches", "triple", "--out", str(tmp_path), *OVR])


def test_block_sweep_plans_each_cache_batch_and_step_count():
    """The ancestral block sweep: every cache x {1, largest batch} x --block-steps-div (planned, not run)."""
    import argparse
    from types import SimpleNamespace

    from sandbox.bench import gen
    from sandbox.data.tokenizers import ByteTokenizer

    p = argparse.ArgumentParser()
    gen.add_arguments(p)
    o = gen.resolve(p.parse_args(["--samplers", "mdm_ancestral", "--length", "64", "--lengths", "64",
                                  "--batches", "1,8", "--blocks", "16", "--block-steps-div", "4,8",
                                  "--caches", "dual,causal"]))
    subj = SimpleNamespace(tokenizer=ByteTokenizer(), trained=SimpleNamespace(), family="mdm",
                           objective="mdlm")
    pts = [x for x in gen_plan.plan(o, {"mdm": subj}) if "block" in x.sweeps]
    got = {(x.sampler.cache, x.batch, x.sampler.steps) for x in pts}
    assert got == {(c, b, s) for c in ("none", "dual", "causal") for b in (1, 8) for s in (16, 8)}
    # a causal denoiser (objective.mask_kind=causal) has no block caches: only cache=none is planned
    causal = SimpleNamespace(**vars(subj), mask_kind="causal")
    pts = [x for x in gen_plan.plan(o, {"mdm": causal}) if "block" in x.sweeps]
    assert {x.sampler.cache for x in pts} == {"none"} and len(pts) == 4
    with pytest.raises(SystemExit):
        cli.main(["gen", "--block-steps-div", "0"])


def test_bd3lm_cost_prediction_counts_block_calls_not_full_forwards():
    from sandbox.samplers import BD3LMSampler
    from sandbox.samplers.mdm import Ancestral

    p = gen_plan.Point("bd3lm", "bd3lm", BD3LMSampler(block_size=16, inner=Ancestral(steps=2)), 32, 128, 0)
    assert gen_time.predict_nfe(p, []) == 6            # (2 steps + 1 commit) x 2, not 128 forwards


def test_cached_cost_prediction_counts_the_positions_a_smaller_batch_computed():
    from sandbox.samplers.mdm import Ancestral

    s = Ancestral(steps=64, block_size=32, cache="causal")
    p = gen_plan.Point("mdm", "mdm_ancestral", s, 32, 512, 0)
    assert gen_time.predict_nfe(p, []) == 64           # nothing measured: the step count
    small = {"sampler": s.name, "settings": s.settings(), "batch": 1, "length": 512, "prompt_len": 0,
             "nfe": 79, "recomputed_tokens": 79 * 32}
    assert gen_time.predict_nfe(p, [small]) == 5       # 2,528 positions = 5 forwards of 512, not 64


def test_random_subjects_use_the_objective_that_declares_the_family():
    """No table of objective names: a family's random model trains with the first
    conf/objective/ config whose objective says it is read by that family's samplers."""
    from sandbox.core.build import compose
    from sandbox.core.cli import instantiate
    from sandbox.core.errors import UserError

    for family in ("ar", "mdm", "bd3lm"):
        stem = gen_plan.objective_for_family(family)
        assert instantiate(compose([f"objective={stem}"]).objective, "objective").sampler_family == family
    assert gen_plan.objective_for_family("mdm") == "mdlm"
    with pytest.raises(UserError, match="sampler_family=nope"):
        gen_plan.objective_for_family("nope")


def test_every_sampler_family_has_a_run_flag():
    assert set(gen_plan.FAMILY_OF.values()) == set(gen_summary.RUN_FLAG)
