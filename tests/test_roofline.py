"""The roofline latency model (``analysis.roofline``): its arithmetic on hand-made compute-,
memory- and overhead-bound passes, the hardware files, the calibration on synthetic forwards
with a known answer, the work the samplers declare (``forward_plan``) and count
(``sandbox.core.flops.forward_work``), and the report's part on a benchmark with and without
recorded work."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
from flax import nnx

from analysis import roofline
from analysis.errors import ReportError
from analysis.roofline import Hardware, pass_time
from analysis.sections import hardware as hw_section
from sandbox.core.flops import call_work, forward_work, matmul_params
from sandbox.models.transformer import Transformer
from sandbox.samplers.ar import ARSampler
from sandbox.samplers.bd3lm import BD3LMSampler
from sandbox.samplers.mdm import Threshold

HW = Hardware(name="toy", label="toy", peak_flops={"float32": 1e12}, bandwidth=1e10, compute_efficiency=0.5,
              memory_efficiency=0.5, overhead_forward_s=1e-4, overhead_layer_s=1e-5)


# --- arithmetic -------------------------------------------------------------------------------
def test_a_compute_bound_pass_costs_flops_over_the_effective_peak_plus_the_fixed_cost():
    # 1e10 FLOPs at 0.5 x 1e12 = 20 ms; 1e6 bytes at 0.5 x 1e10 = 0.2 ms; 2 layers: 0.12 ms fixed
    assert pass_time(HW, 1e10, 1e6, 2) == pytest.approx(0.02 + 1e-4 + 2e-5)
    assert roofline.bound_of(HW, 1e10, 1e6, 2) == "compute"


def test_a_memory_bound_pass_costs_bytes_over_the_effective_bandwidth():
    # 1e8 bytes at 5e9 B/s = 20 ms against 1e6 FLOPs = 2 us
    assert pass_time(HW, 1e6, 1e8, 2) == pytest.approx(0.02 + 1.2e-4)
    assert roofline.bound_of(HW, 1e6, 1e8, 2) == "memory"


def test_an_overhead_bound_pass_costs_its_launches():
    t = pass_time(HW, 1e3, 1e3, 10)   # 2 ns of compute, 0.2 us of memory, 0.2 ms of launches
    assert t == pytest.approx(1e-4 + 1e-4, rel=1e-2) and roofline.bound_of(HW, 1e3, 1e3, 10) == "overhead"


def test_a_call_sums_its_passes():
    row = {"latency_s": 1.0, "dtype": "float32",
           "work": {"n_layers": 2, "passes": [{"count": 1, "flops": 1e10, "bytes": 1e6},
                                              {"count": 10, "flops": 1e6, "bytes": 1e8}]}}
    assert roofline.predict(row, HW) == pytest.approx(0.02012 + 10 * 0.02012)


def test_a_matmul_of_few_rows_reaches_a_fraction_of_the_roof_and_one_row_is_a_matvec():
    few = dataclasses.replace(HW, rows_half=24.0)
    base = pass_time(HW, 1e10, 1e6, 2)                        # 20 ms of compute + 0.12 ms fixed
    # 8 rows at n_1/2 = 24: 8 / (8 + 24) of the roof, so 4x the compute time
    assert pass_time(few, 1e10, 1e6, 2, rows=8) == pytest.approx(4 * 0.02 + 1.2e-4)
    assert pass_time(few, 1e10, 1e6, 2, rows=1) == pytest.approx(base)       # the matvec kernel
    assert pass_time(few, 1e10, 1e6, 2, rows=None) == pytest.approx(base)    # rows unknown: no penalty
    # a memory-bound pass stays memory-bound while its compute time is under the stream
    assert pass_time(few, 1e6, 1e8, 2, rows=8) == pytest.approx(pass_time(HW, 1e6, 1e8, 2))


def test_the_samplers_draw_costs_per_logit_value_and_can_bound_a_pass():
    drawn = dataclasses.replace(HW, draw_s_per_logit=3e-8)
    # 128 positions x 260 tokens at 30 ns: 1.0 ms on top of the pass
    assert pass_time(drawn, 1e10, 1e6, 2, logits=128 * 260) == pytest.approx(0.02 + 1.2e-4 + 128 * 260 * 3e-8)
    assert roofline.bound_of(drawn, 1e3, 1e3, 0, logits=1e6) == "sampling"
    row = {"latency_s": 1.0, "dtype": "float32",
           "work": {"n_layers": 2, "passes": [{"count": 3, "batch": 2, "q": 4, "flops": 1e10, "bytes": 1e6,
                                               "logits": 2 * 4 * 260}]}}
    assert roofline.predict(row, drawn) == pytest.approx(3 * (0.02 + 1.2e-4 + 2 * 4 * 260 * 3e-8))
    few = dataclasses.replace(HW, rows_half=8.0)     # the pass's rows are its batch x q
    assert roofline.predict(row, few) == pytest.approx(3 * (0.02 * 2 + 1.2e-4))


def test_a_dtype_without_a_peak_is_named():
    with pytest.raises(ReportError, match="no peak_flops for dtype bfloat16"):
        pass_time(HW, 1.0, 1.0, 1, "bfloat16")


# --- hardware files ---------------------------------------------------------------------------
def test_the_shipped_hardware_files_load_with_their_sources():
    names = roofline.available()
    assert {"cpu", "h100", "h200", "tpu_v5e"} <= set(names)
    for n in names:
        h = roofline.load_hardware(n)
        assert h.sources, n
        assert h.ready() != h.measured, n          # datasheet hardware is complete; the CPU is measured
    h200 = roofline.load_hardware("h200")
    assert h200.bandwidth == 4.8e12 and h200.peak("bfloat16") == 9.89e14   # 4.8e12 is a number, not a str


def test_an_unknown_hardware_lists_the_available_ones():
    with pytest.raises(ReportError, match=r"hardware=a100: unknown; available: cpu, h100, h200, tpu_v5e"):
        roofline.load_hardware("a100")


def test_a_hardware_file_with_an_unknown_field_or_a_bad_number_is_named(tmp_path):
    (tmp_path / "x.yaml").write_text("peak_flops: 1e12\nbandwith: 3\n")
    with pytest.raises(ReportError, match="unknown field.*bandwith"):
        roofline.load_hardware("x", tmp_path)
    (tmp_path / "y.yaml").write_text("peak_flops: fast\nbandwidth: 1\n")
    with pytest.raises(ReportError, match="not a number"):
        roofline.load_hardware("y", tmp_path)


# --- calibration and validation ---------------------------------------------------------------
PROBE = {"kind": "probe", "peak_gflops": 100.0, "bandwidth_gbs": {"ar": 20.0, "mdm": 20.0},
         "draw_ns_per_logit": 30.0}
FORWARD_SHAPES = ([1, 128], [4, 2], [2, 16], [1, 1024])     # matmul rows 128, 8, 32, 1024


def _synthetic_rows(eff: float, overhead: float, rows_half: float = 0.0) -> list[dict]:
    """Benchmark rows whose bare forwards and calls follow the roofline exactly on a CPU of
    100 GFLOP/s, 20 GB/s, ``eff``, ``overhead``, ``rows_half`` and PROBE's draw cost."""
    true = Hardware(name="t", label="t", peak_flops=1e11, bandwidth=2e10, compute_efficiency=eff,
                    overhead_forward_s=overhead, rows_half=rows_half, draw_s_per_logit=3e-8)
    rows = []
    for i, (fam, q, n) in enumerate((("mdm", 256, 16), ("mdm", 64, 8), ("ar", 1, 127), ("mdm", 1024, 4))):
        passes = [{"count": float(n), "batch": 1, "q": q, "kv": q, "flops": 2e6 * q,
                   "bytes": 1.2e7 + 4e3 * q, "logits": 260 * q}]
        if fam == "ar":
            passes = [{"count": 1.0, "batch": 1, "q": 1, "kv": 1, "flops": 2e6, "bytes": 1.2e7,
                       "logits": 260}] + passes
        row = {"kind": "gen", "point": i, "family": fam, "label": fam, "batch": 1, "length": q,
               "prompt_len": 0,
               "nfe": sum(p["count"] for p in passes), "dtype": "float32", "settings": {"use_cache": True},
               "work": {"n_layers": 4, "passes": passes},
               "forward_shape": FORWARD_SHAPES[i],
               "forward_work": {"flops": 2e6 * math.prod(FORWARD_SHAPES[i]),
                                "bytes": 1.2e7 + 4e3 * math.prod(FORWARD_SHAPES[i])},
               "forward1_work": {"flops": 2e6, "bytes": 1.2e7}}
        row["latency_s"] = roofline.predict(row, true)
        row["forward_loop_s"] = pass_time(true, row["forward_work"]["flops"], row["forward_work"]["bytes"], 4,
                                          rows=math.prod(FORWARD_SHAPES[i]))
        row["forward1_loop_s"] = pass_time(true, 2e6, 1.2e7, 4)
        rows.append(row)
    return rows


def test_calibration_recovers_a_known_efficiency_and_fixed_cost():
    rows = _synthetic_rows(0.3, 2e-3)
    cpu = roofline.calibrate(roofline.load_hardware("cpu"), rows, PROBE)
    assert cpu.compute_efficiency == pytest.approx(0.3, rel=0.03)
    assert cpu.overhead_forward_s == pytest.approx(2e-3, rel=0.05)
    assert cpu.rows_half < 2.0                 # none in the data; the grid's smallest values fit as well
    v = roofline.validate(rows, PROBE, "cpu")
    assert v["n"] == 4 and v["within"] == 1.0 and v["p80_abs_err"] < 0.05


def test_calibration_recovers_the_half_performance_rows_and_the_draw_enters_the_calls():
    rows = _synthetic_rows(0.5, 1e-4, rows_half=24.0)
    cpu = roofline.calibrate(roofline.load_hardware("cpu"), rows, PROBE)
    assert cpu.compute_efficiency == pytest.approx(0.5, rel=0.05)
    assert cpu.rows_half == pytest.approx(24.0, rel=0.1)
    v = roofline.validate(rows, PROBE, "cpu")
    assert v["within"] == 1.0 and v["p80_abs_err"] < 0.05
    # the same calls predicted without the probe's draw cost fall short by exactly the draw
    no_draw = {k: x for k, x in PROBE.items() if k != "draw_ns_per_logit"}
    with pytest.warns(UserWarning, match="no draw_ns_per_logit"):
        short = roofline.validate(rows, no_draw, "cpu")
    assert all(pred < r["latency_s"] for r, pred, _ in short["rows"])


def test_validation_fails_where_the_model_is_wrong():
    rows = _synthetic_rows(0.3, 2e-3)
    for r in rows[:3]:
        r["latency_s"] *= 2.0                      # the calls cost twice what the forwards say
    v = roofline.validate(rows, PROBE, "cpu")
    assert v["within"] == pytest.approx(0.25) and v["median_abs_err"] > 0.4


def test_a_point_without_work_is_skipped_with_a_warning_naming_it():
    rows = _synthetic_rows(0.3, 2e-3)
    del rows[1]["work"]
    with pytest.warns(UserWarning, match=r"point 1 \(mdm .*no work.passes"):
        kept = roofline.usable(rows)
    assert [r["point"] for r in kept] == [0, 2, 3]


def test_a_measured_hardware_without_a_probe_is_named_not_guessed():
    with pytest.raises(ReportError, match="no probe row for ar"):
        roofline.for_point(roofline.load_hardware("cpu"), None, "ar")


def test_break_even_is_a_diffusion_forward_over_an_ar_step():
    rows = _synthetic_rows(0.3, 2e-3)
    for r in rows:
        r["length"], r["batch"] = 64, 1
    f = roofline.hardware_of("h200", rows, PROBE)
    [x] = [y for y in roofline.step_times(rows, f) if y["row"]["point"] == 1]
    h = roofline.load_hardware("h200")
    fwd = pass_time(h, 2e6 * 64, 1.2e7 + 4e3 * 64, 4, rows=64, logits=260 * 64)
    step = pass_time(h, 2e6, 1.2e7 + 4e3, 4, rows=1, logits=260)
    assert x["breakeven"] == pytest.approx(fwd / step) and x["bound"] == "overhead"


# --- the work samplers declare ----------------------------------------------------------------
def test_forward_work_counts_matmuls_attention_and_bytes():
    m = Transformer(vocab_size=260, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, rngs=nnx.Rngs(0))
    w = forward_work(m, batch=3, q=5, kv=40)
    n = matmul_params(m)
    assert w["flops"] == pytest.approx(2 * 15 * n + 4 * 2 * 64 * 15 * 40)
    assert w["weight_bytes"] == 4 * m.n_params(non_embedding=False)
    assert w["kv_bytes"] == pytest.approx(2 * 2 * 2 * 16 * 3 * 40 * 4)     # 2 kv heads of 16 dims
    assert w["bytes"] == pytest.approx(w["weight_bytes"] + w["kv_bytes"] + w["activation_bytes"])


def test_sampler_plans_account_for_every_forward():
    ar = ARSampler(chunk=16)
    plan = ar.forward_plan(batch=2, length=128, prompt_len=8, nfe=120)
    assert plan[0] == (1.0, 2, 9.0, 9.0, 1.0) and plan[1][0] == 119 and plan[1][2] == 1.0
    assert plan[1][4] == 1.0                            # each forward draws the last position only
    assert 9 + 1 <= plan[1][3] <= 128 + 16 + 64        # about the cache prefix a step reads
    nocache = dataclasses.replace(ar, use_cache=False).forward_plan(1, 32, 0, 32)
    assert nocache == [(32.0, 1, 33.0, 33.0, 1.0)]
    thr = Threshold()
    assert thr.forward_plan(1, 64, 0, 10) == [(10.0, 1, 64.0, 64.0)]
    assert thr.forward_plan(1, 64, 16, 10, computed=16 + 10 * 48) == [(10.0, 1, 49.6, 64.0)]
    assert BD3LMSampler(block_size=16).forward_plan(1, 64, 0, 20) == [(20.0, 1, 16.0, 48.0)]



def test_a_call_records_the_rows_of_its_matmuls_and_the_logits_it_draws_from():
    m = Transformer(vocab_size=260, d_model=64, n_layers=2, n_heads=4, rngs=nnx.Rngs(0))
    ar = call_work(ARSampler(chunk=16), m, batch=2, length=128, prompt_len=8, nfe=120)
    prefill, step = (roofline.pass_args(p) for p in ar["passes"])
    assert prefill == {"rows": 2 * 9, "logits": 2 * 1 * 260}      # 9 positions computed, one drawn
    assert step == {"rows": 2, "logits": 2 * 260}
    thr = call_work(Threshold(), m, batch=3, length=64, prompt_len=16, nfe=10, computed=16 + 10 * 48)
    [p] = (roofline.pass_args(p) for p in thr["passes"])
    assert p["rows"] == pytest.approx(3 * 49.6) and p["logits"] == pytest.approx(3 * 49.6 * 260)

# --- the report part --------------------------------------------------------------------------
def test_the_report_part_validates_tabulates_and_projects(tmp_path):
    rows = _synthetic_rows(0.3, 2e-3)
    for r in rows:
        r.update(length=64, generated=64, sampler=r["label"], settings_text="", sweeps=["length"],
                 tokens_per_forward=64 / r["nfe"])
    bench = {"dir": tmp_path / "gen-x", "meta": {"backend": "cpu", "device": "cpu"}, "rows": rows,
             "probe": PROBE, "reference": []}
    md = "\n".join(hw_section.section_lines(bench, tmp_path))
    assert "100% within ±30%" in md and "meets the target" in md
    assert "| mdm |  | 1 | 64 |" in md and "h200 (roofline)" in md and "tpu_v5e (roofline)" in md
    assert "projected on NVIDIA H200" in md


def test_the_report_part_says_so_when_no_point_records_work(tmp_path):
    rows = _synthetic_rows(0.3, 2e-3)
    for r in rows:
        del r["work"]
    bench = {"dir": tmp_path / "gen-x", "meta": {"backend": "cpu"}, "rows": rows, "probe": PROBE,
             "reference": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # the part reports the skips itself
        md = "\n".join(hw_section.section_lines(bench, tmp_path))
    assert "4 point(s) skipped" in md and "No point records the work" in md and not math.isnan(len(md))


def test_code_edit_latency_is_projected_per_edit_from_its_recorded_forwards(tmp_path):
    import pandas as pd

    from analysis.sections import edit_worlds

    step = {"count": 40.0, "batch": 1, "q": 1, "kv": 100, "flops": 2e8, "bytes": 5e8}
    canvas = {"count": 8.0, "batch": 1, "q": 96, "kv": 224, "flops": 2e10, "bytes": 6e8}
    lat = pd.DataFrame([
        {"series": "ar whole", "objective": "ar", "bound": "exact", "bin": "1", "latency_s": 1.5,
         "dtype": "float32", "work": {"n_layers": 30, "passes": [step]}},
        {"series": "mdlm inplace", "objective": "mdlm", "bound": "upper", "bin": "1", "latency_s": 6.0,
         "dtype": "float32", "work": {"n_layers": 30, "passes": [canvas]}},
        {"series": "mdlm inplace", "objective": "mdlm", "bound": "upper", "bin": "1", "latency_s": 6.0,
         "dtype": "float32", "work": None}])                         # evaluated before work was recorded
    h = roofline.load_hardware("h200")
    proj = edit_worlds.project(lat, "h200")
    assert proj[0] == pytest.approx(40 * pass_time(h, 2e8, 5e8, 30)) and math.isnan(proj[2])
    lines, files = edit_worlds.section_lines(lat, ["1"], tmp_path, lambda o, i: {"color": "k"})
    md = "\n".join(lines)
    ratio = 8 * pass_time(h, 2e10, 6e8, 30) / (40 * pass_time(h, 2e8, 5e8, 30))
    assert f"({ratio:.2f}x)" in md and "1 latency rows without recorded work" in md
    assert files == ["edits_latency_both_worlds.png"] and (tmp_path / files[0]).is_file()


def test_the_command_line_prints_every_point_and_fits_a_gpu_file(tmp_path, capsys):
    import json
    import subprocess
    import sys

    d = tmp_path / "bench" / "gen-20260101-000000"
    d.mkdir(parents=True)
    rows = _synthetic_rows(0.3, 2e-3)
    for r in rows:
        r.update(settings_text="", length=64)
    meta = {"kind": "meta", "bench": "gen", "backend": "cpu", "device": "cpu"}
    (d / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [meta, PROBE, *rows]))
    roofline.main([str(tmp_path / "bench")])
    out = capsys.readouterr().out
    assert "cpu: 4 points, median error 1%" in out and "100% within +-30%" in out   # the fit's grid step
    roofline.main([str(tmp_path / "bench"), "hardware=h200", "calibrate=true"])
    out = capsys.readouterr().out
    assert "compute_efficiency:" in out and "overhead_forward_s:" in out and "h200: 4 points" in out
    bad = subprocess.run([sys.executable, "-m", "analysis.roofline", str(tmp_path / "bench"),
                          "hardware=a100"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "available: cpu" in bad.stderr
