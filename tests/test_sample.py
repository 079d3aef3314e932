"""``sandbox.sample`` and ``sandbox.evaluate eval=quality`` on tiny trained runs.

A tiny AR run (trained on the ``test`` split, so it doubles as the judge that
``judge_dir=null`` must discover) and a tiny MDLM run are trained once for the module.
Command-line behaviour (files, one-line errors, exit 2, nothing written outside the run) is
checked in a few subprocesses; everything else in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, compose

import sandbox.core.generate as gen_mod
import sandbox.evaluate as evaluate_mod
import sandbox.sample as sample_mod
from sandbox.core.cli import check_sampler_overrides
from sandbox.core.errors import UserError
from sandbox.train import run

MASK_ID = 258  # ByteTokenizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sandbox_cache) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in (("ar", ["objective=ar", "train.train_split=test"]), ("mdlm", ["objective=mdlm"]),
                        ("bd3lm", ["objective=bd3lm", "objective.block_size=8"])):
        cfg = compose([*TINY, *extra, f"cache_dir={sandbox_cache}", "train.eval_every=6",
                       "train.ckpt_every=6"])
        run(cfg, root / name, [])
        out[name] = root / name
    out["root"] = root
    return out


def sample_cfg(*overrides):
    return compose(["progress=false", *overrides], config_name="sample")


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def cli(module: str, *args, cwd: Path):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)


# --- the command line -------------------------------------------------------------------------
def test_sample_cli_writes_jsonl_with_every_field(runs, tmp_path):
    r = cli("sandbox.sample", f"run_dir={runs['mdlm']}", "sampler=mdm_ancestral", "sampler.steps=8",
            "num_samples=5", "batch_size=2", "prompt='ab'", "seed=3", "progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.iterdir()), "nothing may be written outside the run folder"
    [path] = (runs["mdlm"] / "samples").glob("mdm_ancestral-*-seed3.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 5 and [x["index"] for x in lines] == list(range(5))
    for x in lines:
        assert set(x) >= {"text", "tokens", "nfe", "sampler", "settings", "precision", "seed", "length",
                          "prompt", "step", "run"}
        assert len(x["tokens"]) == x["length"] == 32
        assert MASK_ID not in x["tokens"]
        assert x["tokens"][:2] == [97, 98] and x["text"].startswith("ab") and x["prompt"] == "ab"
        assert 1 <= x["nfe"] <= 8 and x["settings"]["steps"] == 8
        assert x["sampler"] == "mdm_ancestral" and x["precision"] == "exact" and x["seed"] == 3
        assert x["step"] == 6 and x["weights"] == "ema"
    meta = json.loads(path.with_name(path.name.replace(".jsonl", ".meta.json")).read_text())
    assert meta["num_samples"] == 5 and meta["compile_s"] > 0 and meta["samples_per_s"] > 0


@pytest.mark.parametrize("args,words", [
    (["sampler=nope"], "sampler=nope: unknown option"),
    (["sampler=mdm_threshold"], "trained with objective=ar"),
], ids=["unknown-sampler", "diffusion-sampler-on-ar-run"])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, args, words):
    before = files(runs["ar"])
    r = cli("sandbox.sample", f"run_dir={runs['ar']}", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert files(runs["ar"]) == before and not list(tmp_path.iterdir())


# --- in-process -------------------------------------------------------------------------------
def test_ar_sampling_keeps_the_prompt_and_counts_one_call_per_token(runs, tmp_path):
    out = tmp_path / "s.jsonl"
    path = sample_mod.task(sample_cfg(f"run_dir={runs['ar']}", "num_samples=3", "batch_size=2",
                                      "length=20", "prompt=def", f"out={out}"))
    assert path == out and (tmp_path / "s.meta.json").exists()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    for x in lines:
        assert x["sampler"] == "ar" and x["tokens"][:3] == [100, 101, 102] and len(x["tokens"]) == 20
        assert x["nfe"] == 20 - 3


def test_default_sampler_follows_the_objective(runs):
    s = gen_mod.setup(sample_cfg(f"run_dir={runs['mdlm']}"))
    assert s.sampler.name == "mdm_ancestral" and s.sampler.steps == 32  # 64 lowered to the length
    assert s.sampler.mask_id == MASK_ID and s.length == 32


def test_bd3lm_run_samples_with_its_block_size_by_default(runs, tmp_path):
    s = gen_mod.setup(sample_cfg(f"run_dir={runs['bd3lm']}"))
    assert s.sampler.name == "bd3lm" and s.sampler.block_size == 8 and s.sampler.inner.steps == 8
    out = tmp_path / "s.jsonl"
    sample_mod.task(sample_cfg(f"run_dir={runs['bd3lm']}", "num_samples=3", "batch_size=3", f"out={out}"))
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    samples = [r for r in recs if "tokens" in r]
    assert len(samples) == 3 and all(MASK_ID not in r["tokens"] and len(r["tokens"]) == 32 for r in samples)
    with pytest.raises(UserError, match="trained with objective=bd3lm"):
        gen_mod.setup(sample_cfg(f"run_dir={runs['bd3lm']}", "sampler=mdm_ancestral"))


@pytest.mark.parametrize("which,overrides,words", [
    ("mdlm", ["sampler=ar"], "trained with objective=mdlm"),
    ("mdlm", ["sampler=mdm_ancestral", "sampler.steps=0"], "sampler.steps=0"),
    ("mdlm", ["sampler=mdm_topk_confidence", "sampler.steps=33"], "sampler.steps=33"),
    ("mdlm", ["sampler=mdm_threshold", "sampler.tau=0"], "sampler.tau=0"),
    ("mdlm", ["sampler=mdm_threshold", "sampler.tau=1.5"], "sampler.tau=1.5"),
    ("mdlm", ["prompt=" + "x" * 40], "not shorter than the output length 32"),
    ("ar", ["length=8", "prompt=" + "x" * 8], "not shorter than the output length 8"),
    ("ar", ["weights=best"], "weights"),
    ("ar", ["num_samples=0"], "num_samples=0"),
], ids=["ar-sampler-on-mdlm", "steps-0", "steps-over-length", "tau-0", "tau-over-1", "prompt-mdlm",
        "prompt-ar", "weights", "num-samples"])
def test_bad_settings_are_refused_before_compiling(runs, monkeypatch, which, overrides, words):
    monkeypatch.setattr(gen_mod, "compile_sampler", lambda *a: pytest.fail("compiled"))
    before = files(runs[which])
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        sample_mod.task(sample_cfg(f"run_dir={runs[which]}", *overrides))
    assert files(runs[which]) == before


def test_bad_run_folders(runs, tmp_path):
    with pytest.raises(UserError, match="run_dir: required"):
        sample_mod.task(sample_cfg())
    with pytest.raises(UserError, match="no such folder"):
        sample_mod.task(sample_cfg(f"run_dir={tmp_path / 'missing'}"))
    with pytest.raises(UserError, match="no config.yaml"):
        sample_mod.task(sample_cfg(f"run_dir={tmp_path}"))
    (tmp_path / "config.yaml").write_text((runs["ar"] / "config.yaml").read_text())
    with pytest.raises(UserError, match="train it first"):
        sample_mod.task(sample_cfg(f"run_dir={tmp_path}"))


def test_sampler_keys_need_the_sampler_named():
    with pytest.raises(UserError, match="name the sampler"):
        check_sampler_overrides(["run_dir=x", "sampler.steps=3"])
    check_sampler_overrides(["run_dir=x", "sampler=mdm_ancestral", "sampler.steps=3"])


# --- evaluate eval=quality --------------------------------------------------------------------
def eval_cfg(*overrides):
    return compose(["progress=false", "num_samples=4", "batch_size=2", *overrides], config_name="evaluate")


def test_evaluate_quality_writes_samples_and_reference_stats(runs, capsys):
    line = evaluate_mod.task(eval_cfg("eval=quality", f"run_dir={runs['mdlm']}", f"runs_root={runs['root']}",
                                      "sampler=mdm_ancestral", "sampler.steps=4", "code=true"))
    saved = [json.loads(x) for x in (runs["mdlm"] / "eval_quality.jsonl").read_text().splitlines()]
    assert saved[-1] == line
    assert line["kind"] == "quality" and line["judge_dir"] == str(runs["ar"])  # discovered
    for key in ("step", "sampler", "settings", "precision", "seed", "length", "nfe", "latency_s_per_sample",
                "tokenizer", "model", "objective"):
        assert key in line, key
    s, ref = line["samples"], line["reference"]
    assert s["n_samples"] == 4 and ref["n_samples"] == 3   # the val split holds 3 windows of 32
    for q in (s, ref):
        assert math.isfinite(q["gen_ppl"]) and q["gen_ppl"] > 1
        assert 0 < q["distinct_1"] <= 1 and q["unigram_entropy"] > 0
        assert 0 <= q["ast_parse_rate"] <= 1 and 0 <= q["ast_parse_rate_lines"] <= 1
    assert Path(line["samples_file"]).exists()
    out = capsys.readouterr().out
    assert "gen_ppl" in out and "reference (val)" in out
    assert line["until_eos"] is False
    stop = evaluate_mod.task(eval_cfg("eval=quality", f"run_dir={runs['mdlm']}", f"runs_root={runs['root']}",
                                      "sampler=mdm_ancestral", "sampler.steps=4", "sampler.block_size=8",
                                      "sampler.stop_at_eos=true"))
    assert stop["until_eos"] is True and math.isfinite(stop["samples"]["gen_ppl"])


def test_evaluate_quality_with_a_pretrained_judge_and_temperatures(runs, tmp_path):
    """judge=smollm2 pointed at a tiny GGUF: judge bits per byte for samples and held-out text,
    one line per temperature (the frontier), JSD to held-out n-grams and copied spans."""
    import tiny_gguf

    path = tiny_gguf.write(tmp_path / "judge.gguf")
    before = len((runs["ar"] / "eval_quality.jsonl").read_text().splitlines()) \
        if (runs["ar"] / "eval_quality.jsonl").exists() else 0
    last = evaluate_mod.task(eval_cfg(f"run_dir={runs['ar']}", "judge_dir=none", "judge=smollm2",
                                      f"judge.weights=gguf:{path}", "temperatures=[0.5,1.0]",
                                      "floor_split=train"))
    lines = [json.loads(x) for x in (runs["ar"] / "eval_quality.jsonl").read_text().splitlines()][before:]
    assert [x["temperature"] for x in lines] == [0.5, 1.0] and lines[-1] == last
    assert lines[0]["settings"]["temperature"] == 0.5 and lines[0]["samples_file"] != lines[1]["samples_file"]
    for x in lines:
        s, r = x["samples"], x["reference"]
        assert x["text_judge"]["weights"] == f"gguf:{path}" and x["text_judge"]["arch"] == "llama"
        for q in (s, r):
            assert math.isfinite(q["judge_bpb"]) and q["judge_bpb"] > 0 and q["judge_bpb_stderr"] >= 0
            assert 0 <= q["copied_32"] <= 1
        assert 0 <= s["jsd_1"] <= 1 and 0 <= r["jsd_1"] <= 1   # the floor: another held-out set
    assert lines[0]["reference"] == lines[1]["reference"]     # held-out text does not depend on T
    with pytest.raises(UserError, match="temperatures"):
        evaluate_mod.task(eval_cfg(f"run_dir={runs['ar']}", "judge_dir=none", "temperatures=[0,1]"))
    with pytest.raises(UserError, match="no such file"):
        evaluate_mod.task(eval_cfg(f"run_dir={runs['ar']}", "judge_dir=none", "judge=smollm2",
                                   f"judge.weights=gguf:{tmp_path}/none.gguf"))


def test_evaluate_without_a_judge(runs, tmp_path):
    line = evaluate_mod.task(eval_cfg(f"run_dir={runs['ar']}", "judge_dir=none", "num_samples=2"))
    assert line["samples"]["gen_ppl"] is None and line["judge_dir"] is None
    assert line["samples"]["ast_parse_rate"] is None        # text_files of .txt: not code
    with pytest.raises(UserError, match="experiment=judge"):
        evaluate_mod.task(eval_cfg(f"run_dir={runs['mdlm']}", f"runs_root={tmp_path}"))
    with pytest.raises(UserError, match="must be an exact left-to-right run"):
        evaluate_mod.task(eval_cfg(f"run_dir={runs['ar']}", f"judge_dir={runs['mdlm']}"))
