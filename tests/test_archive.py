"""``analysis.archive``: a sweep's finished runs kept small in a committed folder, so pieces run on
different machines accumulate and the report is rebuilt from the archive alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, REPO

from analysis.archive import archive, is_finished, thin
from analysis.errors import ReportError
from analysis.load import final_evals, find_runs, load_metrics

SCALING = FIXTURES / "run_folders" / "scaling"


def _records(n_train: int, total: int, evals=(100, 200)) -> list[dict]:
    out = [{"kind": "meta", "step": 0, "total_steps": total}, {"kind": "compile", "step": 1}]
    for i in range(1, n_train + 1):
        out.append({"kind": "train", "step": i, "train_loss": 1.0 / i})
        if i in evals:
            out.append({"kind": "eval", "step": i, "val_bpb": 2.0 - i / 1000})
    return out


def test_thin_keeps_every_eval_and_evenly_spaced_train_records_ending_with_the_last():
    recs = _records(1000, 1000, evals=(250, 500, 1000))
    out = thin(recs, 7)
    train = [r["step"] for r in out if r["kind"] == "train"]
    assert len(train) == 7 and train[-1] == 1000 and train == sorted(set(train))
    assert all(b - a <= 1000 / 7 + 1 for a, b in zip([0, *train], train))  # evenly spaced
    assert [r["step"] for r in out if r["kind"] == "eval"] == [250, 500, 1000]
    meta = out[0]
    assert meta["archived_train_records"] == 7 and meta["logged_train_records"] == 1000
    assert [r["kind"] for r in out[:2]] == ["meta", "compile"]
    # fewer records than the cap: all kept
    assert len([r for r in thin(_records(5, 5), 200) if r["kind"] == "train"]) == 5


def test_finished_means_the_last_eval_reaches_total_steps():
    assert is_finished(_records(200, 200))
    assert not is_finished(_records(200, 400))  # evaluated at 200 of 400
    assert not is_finished([{"kind": "meta", "total_steps": 10}, {"kind": "train", "step": 10}])
    assert not is_finished([{"kind": "eval", "step": 10}])  # no meta line


def test_archive_keeps_finished_runs_and_the_report_table_is_unchanged(tmp_path):
    src = tmp_path / "runs" / "scaling"
    shutil.copytree(SCALING, src)
    (src / "ar_d32_1e11_s0" / "checkpoints").mkdir()  # left behind
    dest = tmp_path / "docs" / "results" / "scaling"
    done = archive(src, dest, max_train=1)
    assert set(done["unfinished"]) == {"half_mdlm", "noeval_mdlm"}
    assert len(done["archived"]) == len(find_runs(str(src))) - 2
    assert not (dest / "ar_d32_1e11_s0" / "checkpoints").exists()
    config = "ar_d32_1e11_s0/config.yaml"
    assert (dest / config).read_text() == (src / config).read_text()
    for results in ("ar_d64_1e12_s0/eval_edits.jsonl", "mdlm_d32_1e11_s0/eval_quality.jsonl"):
        assert (dest / results).read_bytes() == (src / results).read_bytes()
    assert not list(dest.rglob("*.archive-tmp"))
    cols = ["objective", "step", "val_bpb", "flops", "cfg.model.d_model", "cfg.seed"]

    def table(root, names):
        df = final_evals(load_metrics([root / n for n in sorted(names)]))
        return df[cols].sort_values(cols[:2] + cols[4:]).reset_index(drop=True)

    assert table(dest, done["archived"]).equals(table(src, done["archived"]))
    # archiving again replaces the copies (a newer run wins), nothing doubles
    (src / "ar_d32_1e11_s0" / "env.json").write_text('{"new": true}\n')
    archive(src, dest)
    assert json.loads((dest / "ar_d32_1e11_s0" / "env.json").read_text()) == {"new": True}
    assert len(find_runs(str(dest))) == len(done["archived"])


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ReportError, match="no run folders"):
        archive(tmp_path, tmp_path / "out")
    with pytest.raises(ReportError, match="max_train=0"):
        archive(SCALING, tmp_path / "out", max_train=0)
    cmd = [sys.executable, "-m", "analysis.archive", str(tmp_path / "missing"), str(tmp_path / "o")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    r = subprocess.run([sys.executable, "-m", "analysis.archive", "only-one"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()
