"""The training benchmark on a very small model: rows complete and sane, results written,
the NNX variants computing the same step, one-line errors for bad flags, and the bench's
shared pieces (tables, flag lists, device questions asked of sandbox.core.mesh only)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from sandbox.bench import cli, nnx_variants, peak, results
from sandbox.core.errors import UserError

SMALL = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2"]


def _positive_finite(row, keys):
    for k in keys:
        assert k in row, f"missing {k}"
        assert isinstance(row[k], (int, float)) and math.isfinite(row[k]) and row[k] > 0, (k, row[k])


def test_matmul_peak_positive():
    _positive_finite({"g": peak.measure_matmul_peak(n=128, repeats=2)}, ["g"])


@pytest.mark.slow  # ~12 s on 2 cores: the default suite's budget (the CLI's parts are tested apart)
def test_cli_train_writes_results(tmp_path, capsys):
    out = cli.main(["train", "--models", "tiny", "--objectives", "mdlm", "--attention", "xla",
                      "--batch", "4", "--seq", "16", "--steps", "2", "--nnx-steps", "2", "--peak-n", "128",
                      "--out", str(tmp_path),
                      *[a for o in SMALL for a in ("-o", o)]])
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "MFU %" in printed and "nnx.jit / jax.jit" in printed
    runs = list(tmp_path.glob("train-*"))
    assert len(runs) == 1 and (runs[0] / "env.json").exists()
    rows = [json.loads(line) for line in (runs[0] / "results.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds[:3] == ["meta", "peak", "train"]
    train, peak = rows[2], rows[1]["gflops"]
    assert (train["model"], train["objective"], train["attention"], train["batch"], train["seq"]) == (
        "tiny", "mdlm", "xla", 4, 16)
    assert train["timed_steps"] == 2
    # without --mesh the step timed is the trainer's on mesh=single (one device)
    assert train["mesh"] == "single" and train["mesh_shape"] == {"data": 1, "fsdp": 1}
    _positive_finite(train, ["tokens_per_s", "step_ms", "step_ms_min", "step_ms_max", "compile_s",
                             "flops_per_token", "gflops", "peak_gflops", "mfu", "mfu_best", "params", "loss"])
    assert train["tokens_per_s"] == pytest.approx(4 * 16 / (train["step_ms"] / 1e3))
    assert peak > 0 and train["peak_samples"] >= 2  # the peak is re-measured between the timed steps
    assert train["mfu"] == pytest.approx(train["gflops"] / train["peak_gflops"])
    nnx = [r for r in rows if r["kind"] == "nnx_vs_jit"]
    assert [r["variant"] for r in nnx] == list(nnx_variants.NNX_VARIANTS)
    for r in nnx:
        _positive_finite(r, ["step_ms", "dispatch_ms", "first_call_s", "ratio", "loss"])
        # the same step written four ways: the same losses after the same batches
        assert r["loss"] == pytest.approx(nnx[0]["loss"], rel=1e-4)
    assert out["dir"] == str(runs[0])


def test_unknown_model_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--models", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model=nope") and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written for a bad flag


def test_help_exits_zero():
    r = subprocess.run([sys.executable, "-m", "sandbox.bench", "train", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--attention" in r.stdout


def test_seq_beyond_max_len_is_the_recipes_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--models", "tiny", "--objectives", "ar", "--seq", "4096", "--no-nnx",
                  "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.seq_len=4096 exceeds model.max_len=") and "\n" not in err, err
    assert not any(tmp_path.iterdir())


def test_format_table_and_flag_lists():
    cols = [("name", "name", "{}"), ("n", "n", "{:,}"), ("share %", "share", "{:.1%}")]
    text = results.format_table([{"name": "a", "n": 1234, "share": 0.5}, {"name": "bb", "n": None,
                                                                            "share": 0.25}], cols)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "n", "share", "%"] and set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["a", "1,234", "50.0"] and lines[3].split() == ["bb", "-", "25.0"]
    assert results.csv_list(" a, b,,c ") == ["a", "b", "c"] and results.csv_list(None) == []
    assert results.int_list("1,2", "--x") == [1, 2] and results.float_list("0.5", "--y") == [0.5]
    with pytest.raises(UserError, match="--x: 0 must be at least 1"):
        results.int_list("0", "--x")


def _profile_cli(tmp_path, *extra):
    return cli.main(["train", "--models", "tiny", "--objectives", "ar", "--batch", "4", "--seq", "32",
                     "--steps", "2", "--no-nnx", "--peak-n", "128", "--profile", "--out", str(tmp_path),
                     *extra, *[a for o in SMALL for a in ("-o", o)]])


def test_profile_writes_a_table_with_every_category(tmp_path):
    from sandbox.bench.profile import KINDS, PHASES

    out = _profile_cli(tmp_path)
    row = out["train"][0]
    table = (tmp_path / next(tmp_path.iterdir()).name / "profile-tiny-ar.md").read_text()
    assert row["profile"].endswith("profile-tiny-ar.md")
    for k in KINDS:
        assert f"| {k} |" in table
    from sandbox.core import host_memory
    assert row["malloc"] == host_memory.status()["mode"]  # the row says how host memory was kept
    ops = [json.loads(x) for x in open(row["profile"].replace(".md", ".jsonl"))]
    by_kind = {k: sum(o["ms"] for o in ops if o["kind"] == k) for k in KINDS}
    by_phase = {p: sum(o["ms"] for o in ops if o["phase"] == p) for p in PHASES}
    assert all(v > 0 for v in by_kind.values()), by_kind      # every kind of work is found
    assert all(v > 0 for v in by_phase.values()), by_phase    # forward, backward and the update
    # attention is found by source (the chunked kernel, attention.py) or by the fused CPU kernel's
    # custom-call target (cpu_kernels.py)
    assert any(("attention.py" in o["source"] or "cpu_kernels.py" in o["source"])
               for o in ops if o["kind"] == "attention")
    traces = list((tmp_path / next(tmp_path.iterdir()).name).glob("trace-tiny-ar/**/*.trace.json.gz"))
    assert traces  # the file Perfetto / TensorBoard open


def test_profile_names_the_cpu_kernels_custom_calls_by_their_target():
    """The CPU kernels' custom calls carry the kernel's module, not the layer, on their stack:
    their kind comes from the custom-call target (a matmul call counted as elementwise before)."""
    from sandbox.bench.profile import kind_of

    def call(target):
        return {"opcode": "custom-call", "op_name": "transpose(jvp())/ffi_call", "target": target,
                "custom": False, "stack": [("/x/sandbox/models/transformer.py", "dense", 106)]}

    assert kind_of(call("sandbox_matmul")) == "matmul"
    assert kind_of(call("sandbox_attention_bwd")) == "attention"
    assert kind_of(call("something_else")) == "elementwise"


def test_profile_that_cannot_run_is_one_warning_and_the_row_stays(tmp_path, monkeypatch, capsys):
    import jax

    def broken(*a, **k):
        raise RuntimeError("no profiler here")

    monkeypatch.setattr(jax.profiler, "start_trace", broken)
    out = _profile_cli(tmp_path)
    row = out["train"][0]
    assert "profile" not in row and row["tokens_per_s"] > 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning: --profile" in ln]
    assert len(warn) == 1 and "no profiler here" in warn[0]


def test_profile_with_an_unknown_model_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--models", "nope", "--profile", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model=nope") and "\n" not in err
    assert not any(tmp_path.iterdir())
