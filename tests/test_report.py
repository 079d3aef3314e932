"""The report on a fixture of fake run folders: every section and PNG written, missing or
half-written inputs labelled, never a crash. No model is trained or run here."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from analysis import load, speed
from analysis.report import build_report

Q_KEYS = ("n_samples", "gen_ppl", "unigram_entropy", "unigram_entropy_pooled", "distinct_1", "distinct_2",
          "distinct_3", "distinct_4", "ast_parse_rate", "ast_parse_rate_lines")


def _quality(entropy: float, ppl: float | None = None, n: int = 8) -> dict:
    q = dict.fromkeys(Q_KEYS, 0.5)
    q.update(n_samples=n, gen_ppl=ppl, unigram_entropy=entropy)
    return q


def _write_jsonl(path, rows, torn: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"kind": "train", "step": 9' if torn else ""))


def _run(root, name, objective, evals: bool, torn: bool = False, quality: bool = False):
    d = root / name
    d.mkdir(parents=True)
    cfg = {"objective": {"name": objective}, "model": {"name": "tiny"}, "train": {"seq_len": 32}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for step in (1, 2, 3, 4):
        rows.append({"kind": "train", "step": step, "train_loss": 3.0 - 0.1 * step, "tokens": 100 * step,
                     "flops": 1e9 * step})
        if evals and step % 2 == 0:
            ev = {"kind": "eval", "step": step, "val_bpb": 4.0 - 0.2 * step, "tokens": 100 * step,
                  "flops": 1e9 * step, "bound": "exact" if objective == "ar" else "upper"}
            if objective != "ar":
                ev["val_bpb_stderr"] = 0.01
            rows.append(ev)
    _write_jsonl(d / "metrics.jsonl", rows, torn=torn)
    if quality:
        sampler = "ar" if objective == "ar" else "mdm_threshold"
        settings = ({"use_cache": True, "temperature": 1.0} if objective == "ar"
                    else {"tau": 0.9, "block_size": 0})
        _write_jsonl(d / "eval_quality.jsonl", [{
            "kind": "quality", "run": str(d), "sampler": sampler, "settings": settings, "length": 32,
            "nfe": 32.0 if objective == "ar" else 12.0, "num_samples": 8, "objective": objective,
            "model": "tiny", "latency_s_per_sample": 0.01, "samples": _quality(4.1),
            "reference": _quality(4.4)}])
    return d


def _gen_row(point, label, settings, batch, length, nfe, latency, sweeps, family, source="random",
             prompt_len=0):
    gen = length - prompt_len
    sampler = "ar" if label.startswith("ar") else label
    fwd = latency / max(nfe, 1) / 1.05
    return {"kind": "gen", "point": point, "sweeps": sweeps, "family": family,
            "objective": "ar" if family == "ar" else "mdlm", "model": "tiny", "model_source": source,
            "model_step": None, "sampler": sampler, "label": label, "settings": settings,
            "settings_text": " ".join(f"{k}={v}" for k, v in settings.items()),
            "batch": batch, "length": length, "prompt_len": prompt_len, "generated": gen, "nfe": nfe,
            "nfe_samples": [nfe], "latency_s": latency, "latency_s_min": latency,
            "latency_s_samples": [latency], "latency_per_seq_s": latency / batch,
            "latency_per_token_s": latency / gen, "tokens_per_s": batch * gen / latency,
            "tokens_per_forward": gen / nfe, "time_per_nfe_s": latency / nfe,
            "forward_s": fwd, "forward_shape": [batch, length], "forward_mask": "causal",
            "step_over_forward": latency / nfe / fwd, "compile_s": 1.0, "timed_calls": 3, "quality": None}


def _bench(root, name, complete=True, with_quality=True):
    d = root / "bench" / name
    rows = [{"kind": "meta", "bench": "gen", "options": {"length": 32}, "random_weights": ["ar", "mdm"],
             "subjects": {"ar": {"source": "random", "model": "tiny", "params": 1000},
                          "mdm": {"source": "random", "model": "tiny", "params": 1000}},
             "backend": "cpu", "device": "cpu", "cpu_count": 2}]
    gen = [
        _gen_row(0, "ar", {"use_cache": True}, 1, 16, 16, 0.01, ["length"], "ar"),
        _gen_row(1, "ar", {"use_cache": True}, 1, 32, 32, 0.03, ["length", "batch"], "ar"),
        _gen_row(2, "ar", {"use_cache": True}, 4, 32, 32, 0.05, ["batch"], "ar"),
        _gen_row(3, "ar_nocache", {"use_cache": False}, 1, 16, 8, 0.02, ["length"], "ar", prompt_len=8),
        _gen_row(4, "ar_nocache", {"use_cache": False}, 1, 32, 8, 0.05, ["length"], "ar", prompt_len=24),
        _gen_row(5, "mdm_threshold", {"tau": 0.9, "block_size": 0}, 1, 32, 12, 0.06, ["tau", "length"],
                 "mdm"),
        _gen_row(6, "mdm_threshold", {"tau": 0.7, "block_size": 0}, 1, 32, 8, 0.04, ["tau"], "mdm"),
        _gen_row(7, "mdm_threshold", {"tau": 0.9, "block_size": 0}, 4, 32, 14, 0.2, ["tau"], "mdm"),
        _gen_row(8, "mdm_threshold", {"tau": 0.7, "block_size": 0}, 4, 32, 10, 0.15, ["tau"], "mdm"),
        _gen_row(9, "mdm_threshold", {"tau": 0.9, "block_size": 0}, 1, 16, 7, 0.03, ["length"], "mdm"),
        _gen_row(10, "mdm_ancestral", {"steps": 8, "block_size": 0}, 1, 32, 8, 0.04, ["steps"], "mdm"),
        _gen_row(11, "mdm_ancestral", {"steps": 32, "block_size": 0}, 1, 32, 30, 0.15, ["steps"], "mdm"),
    ]
    rows += gen
    if with_quality:
        rows += [{"kind": "gen_quality", "points": [i], "family": r["family"], "sampler": r["sampler"],
                  "settings_text": r["settings_text"], "length": r["length"], "prompt_len": r["prompt_len"],
                  "quality": _quality(3.5 + 0.05 * i, ppl=20.0 - i),
                  "examples": [f"def f{i}():\n    return ```x"]}
                 for i, r in enumerate(gen)]
        rows += [{"kind": "reference", "family": f, "length": 32, "prompt_len": 0, "quality": _quality(4.4)}
                 for f in ("ar", "mdm")]
    _write_jsonl(d / "results.jsonl", rows)
    if complete:
        (d / "summary.json").write_text("{}\n")
    return d


def _images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


@pytest.fixture
def fixture_runs(tmp_path):
    root = tmp_path / "runs"
    _run(root, "ar", "ar", evals=True, quality=True)
    _run(root, "mdlm", "mdlm", evals=True, quality=True)
    _run(root, "half", "mdlm", evals=False, torn=True)          # half-finished: no eval yet, torn line
    _bench(root, "gen-20260101-000000", complete=False)          # an older, interrupted benchmark
    _bench(root, "gen-20260102-000000", complete=True)
    return root


def test_report_writes_every_section_and_png(fixture_runs, tmp_path):
    out = tmp_path / "report"
    path = build_report(str(fixture_runs / "*"), out, title="Fixture")
    md = path.read_text()
    for heading in ("## Held-out bits per byte", "## Learning curves", "## Sample quality",
                    "## Samples and generation speed"):
        assert heading in md
    assert "Could not be produced" not in md, md
    imgs = _images(md)
    for name in ("learning_curves.png", "_quality_vs_nfe.png", "_quality_vs_latency.png",
                 "_throughput_vs_batch.png", "_latency_vs_length.png", "_step_over_forward.png"):
        assert any(i.endswith(name) for i in imgs), (name, imgs)
    for i in imgs:
        assert (out / i).is_file() and (out / i).stat().st_size > 1000, i
    # the complete benchmark is shown, the older interrupted one only counted
    assert "gen-20260102-000000` (complete)" in md and "1 older benchmark folder" in md
    assert "gen-perplexity under the judge" in md          # quality axis = gen_ppl when present
    assert "(a) time per model call" in md and "(c) mdm_threshold against AR" in md
    assert "| half |" not in md.split("## Learning curves")[0]   # no eval yet: not in the bpb table
    # sample-quality table from eval_quality.jsonl: samples next to real text
    assert "4.100 (4.400)" in md
    assert "```x" not in md  # examples cannot break out of their code block
    again = build_report(str(fixture_runs / "*"), out, title="Fixture").read_text()
    assert again == md  # idempotent


def test_missing_inputs_are_labelled(tmp_path):
    root = tmp_path / "runs"
    _run(root, "half", "ar", evals=False, torn=True)
    md = build_report(str(root / "*"), tmp_path / "out").read_text()
    assert "_No evaluation records found" in md
    assert "_No sample-quality evaluations" in md
    assert "_No generation benchmark under this pattern" in md
    assert "Could not be produced" not in md


def test_bench_without_quality_or_finish(tmp_path):
    root = tmp_path / "runs"
    _bench(root, "gen-20260103-000000", complete=False, with_quality=False)
    md = build_report(str(root / "**"), tmp_path / "out").read_text()
    assert "interrupted" in md
    assert "Quality vs NFE / latency: not drawn (no quality figures" in md
    assert "the benchmark ran without `--quality`" in md
    for i in _images(md):
        assert (tmp_path / "out" / i).is_file()


def test_entropy_fallback_and_pareto(tmp_path):
    root = tmp_path / "runs"
    d = _bench(root, "gen-20260104-000000")
    text = (d / "results.jsonl").read_text().replace('"gen_ppl": ', '"gen_ppl_x": ')
    (d / "results.jsonl").write_text(text)
    bench = load.load_bench_gen(d / "results.jsonl")
    assert all(r["quality"] for r in bench["rows"])  # merged from the gen_quality rows
    vals, label = speed.quality_axis(bench["rows"], bench["reference"])
    assert "entropy" in label and vals[1] == pytest.approx(abs(3.55 - 4.4))
    assert speed.pareto_front([(1, 5), (2, 3), (3, 4), (4, 1)]) == [(1, 5), (2, 3), (4, 1)]
    assert load.find_bench_gen(str(root / "bench")) == [d / "results.jsonl"]


def test_report_with_nothing_is_one_line(tmp_path, capsys):
    from analysis.report import main

    with pytest.raises(SystemExit) as e:
        main([f"runs_glob={tmp_path}/nothing/*", f"out={tmp_path}/out"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
