"""End-to-end tests of the trainer: run folders, exact resume, bad inputs, multirun.

In-process runs call ``sandbox.train.run(cfg, run_dir)`` with a config composed from
``conf/`` (``run`` itself needs no HydraConfig); command-line behaviour (one-line errors,
exit codes, multirun) is tested in subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, REPO, TEXT, TINY, assert_same_curve, compose

import sandbox.data.batches as batches_mod
from sandbox.core.errors import UserError
from sandbox.train import run

RUN_FILES = ("config.yaml", "overrides.yaml", "git.json", "env.json", "shapes.json", "metrics.jsonl")


def tiny_cfg(objective: str, *extra: str, cache: Path):
    return compose([*TINY, f"objective={objective}", f"cache_dir={cache}", *extra])


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def snapshot(folder: Path) -> dict:
    """path -> (mtime_ns, bytes) for every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sandbox_cache) -> dict[str, Path]:
    """6-step runs of each objective, never interrupted (the reference for resume tests)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    out = {}
    for obj in ("ar", "mdlm"):
        overrides = [*TINY, f"objective={obj}"]
        result = run(tiny_cfg(obj, cache=sandbox_cache), root / obj, overrides)
        assert result["step"] == 6
        out[obj] = root / obj
    return out


# ----------------------------------------------------------------------------- run folder


@pytest.mark.parametrize("obj", ["ar", "mdlm"])
def test_run_folder_layout_and_metrics(uninterrupted, obj):
    d = uninterrupted[obj]
    for name in RUN_FILES:
        assert (d / name).is_file(), name
    assert (d / "checkpoints").is_dir()
    saved = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3, 6]

    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["train"]["steps"] == 6 and cfg["objective"]["name"] == obj
    assert cfg["data"]["path"] == str(TEXT)
    assert "${" not in (d / "config.yaml").read_text()  # resolved
    assert f"objective={obj}" in yaml.safe_load((d / "overrides.yaml").read_text())
    assert "commit" in json.loads((d / "git.json").read_text())
    env = json.loads((d / "env.json").read_text())
    assert "jax" in env["packages"] and env["malloc"]["mode"] in ("kept", "system")
    shapes = json.loads((d / "shapes.json").read_text())
    assert any("ema" in k for k in shapes) and any("params" in k for k in shapes)

    train = records(d, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for r in train:
        assert {"step", "train_loss", "tokens_per_s"} <= set(r)
        assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
    assert all(r["tokens_per_s"] > 0 for r in train[1:])  # the first step includes compiling

    evals = records(d, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert math.isfinite(r["val_bpb"]) and r["val_bpb"] > 0
        if obj == "mdlm":
            assert r["val_bpb_stderr"] > 0 and r["bound"] == "upper"
        else:
            assert "val_bpb_stderr" not in r and r["bound"] == "exact"


# ----------------------------------------------------------------------------- resume


# mdlm's twin runs with -m slow (the resume path is the objective-independent trainer's)
@pytest.mark.parametrize("obj", ["ar", pytest.param("mdlm", marks=pytest.mark.slow)])
def test_sigterm_then_resume_matches_an_uninterrupted_run(uninterrupted, sandbox_cache, tmp_path,
                                                          monkeypatch, obj):
    """SIGTERM during step 4 (not a checkpoint step): the trainer saves step 4 and exits;
    running the same command again continues exactly as if never stopped."""
    real_get_batch = batches_mod.get_batch

    def get_batch(*args, step, **kw):
        if step == 4:
            signal.raise_signal(signal.SIGTERM)
        return real_get_batch(*args, step=step, **kw)

    cfg = tiny_cfg(obj, "train.prefetch=0", cache=sandbox_cache)  # batch 4 is built at step 4
    d = tmp_path / "b"
    monkeypatch.setattr(batches_mod, "get_batch", get_batch)
    with pytest.raises(SystemExit) as exit_info:
        run(cfg, d)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert max(r["step"] for r in records(d, "train")) == 4
    assert sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit()) == [3, 4]
    monkeypatch.setattr(batches_mod, "get_batch", real_get_batch)

    result = run(tiny_cfg(obj, cache=sandbox_cache), d)
    assert result["step"] == 6
    assert_same_curve(uninterrupted[obj], d)


@pytest.mark.parametrize("change,key", [
    ("train.steps=9", "train.steps"),     # would stretch the cosine schedule under old steps
    ("seed=5", "seed"),
    ("optim.lr=0.01", "optim.lr"),
])
def test_resuming_with_a_changed_trajectory_setting_is_refused(
        uninterrupted, sandbox_cache, tmp_path, change, key):
    d = tmp_path / "b"
    shutil.copytree(uninterrupted["ar"], d)
    before = snapshot(d)
    with pytest.raises(UserError) as err:
        run(tiny_cfg("ar", change, cache=sandbox_cache), d)
    assert str(err.value).startswith(key + ":"), str(err.value)
    assert "hydra.run.dir" in str(err.value)
    assert snapshot(d) == before


def test_resuming_may_change_reporting_settings(uninterrupted, sandbox_cache, tmp_path):
    d = tmp_path / "e"
    shutil.copytree(uninterrupted["ar"], d)
    result = run(tiny_cfg("ar", "train.eval_every=2", "train.log_every=3", cache=sandbox_cache), d)
    assert result["step"] == 6


def test_rerunning_a_finished_run_changes_nothing(uninterrupted, sandbox_cache, tmp_path):
    d = tmp_path / "done"
    shutil.copytree(uninterrupted["ar"], d)
    before = (d / "metrics.jsonl").read_text()
    result = run(tiny_cfg("ar", cache=sandbox_cache), d)
    assert result["step"] == 6 and result["kind"] == "eval"
    assert (d / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("change,words", [
    ("model.d_model=64", ("checkpoint", "shape")),
    ("model.n_layers=2", ("checkpoint", "parameter")),
])
def test_checkpoint_of_another_model_is_refused_and_the_folder_untouched(
        uninterrupted, sandbox_cache, tmp_path, change, words):
    d = tmp_path / "c"
    shutil.copytree(uninterrupted["ar"], d)
    before = snapshot(d)
    assert "config.yaml" in before and "metrics.jsonl" in before
    with pytest.raises(UserError) as err:
        run(tiny_cfg("ar", change, cache=sandbox_cache), d)
    msg = str(err.value)
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg
    assert snapshot(d) == before


# ----------------------------------------------------------------------------- CLI errors


def cli(*args: str, cache: Path, cwd: Path = REPO, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "SANDBOX_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "sandbox.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


BAD_INPUTS = {
    # id: (overrides, words the one-line message must contain)
    "missing-path": (["data=text_files", "data.path={tmp}/no/such/dir"], ["data.path", "no/such/dir"]),
    "empty-folder": (["data=text_files", "data.path={tmp}/empty"], ["data.path", "empty"]),
    "blank-files": (["data=text_files", f"data.path={FIXTURES / 'blank'}"], ["data.path", "blank"]),
    "not-utf8": (["data=text_files", f"data.path={FIXTURES / 'bad_utf8'}"],
                 ["data.path", "latin1.txt", "UTF-8"]),
    "seq-len-too-long": (["data=text_files", f"data.path={TEXT}", "train.seq_len=100000"],
                         ["train.seq_len"]),
    "unknown-objective": (["objective=nonexistent"], ["objective", "nonexistent", "ar", "mdlm"]),
    "unknown-key": (["train.stepz=3"], ["train.stepz"]),
    "unknown-attention": (["data=text_files", f"data.path={TEXT}", "train.seq_len=32",
                           "model.attention=bogus"], ["model.attention", "bogus"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_no_run_folder(case, sandbox_cache, tmp_path):
    overrides, words = BAD_INPUTS[case]
    (tmp_path / "empty").mkdir()
    run_dir = tmp_path / "run"
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    p = cli(*overrides, "train.progress=false", f"hydra.run.dir={run_dir}", cache=sandbox_cache)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), p.stderr[-2000:]
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- multirun


@pytest.mark.slow  # ~9 s on 2 cores: Hydra's multirun launcher over two objectives
def test_multirun_sweeps_objectives(sandbox_cache, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith(("train.steps", "train.eval_every", "train.ckpt_every"))]
    p = cli("-m", "objective=ar,mdlm", *tiny, "train.steps=2", "train.eval_every=2",
            "train.ckpt_every=2", "train.eval_draws=2", f"hydra.sweep.dir={sweep}", cache=sandbox_cache)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(runs) == 2, runs
    seen = set()
    for d in runs:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        seen.add(cfg["objective"]["name"])
        evals = records(d, "eval")
        assert evals and evals[-1]["step"] == 2 and math.isfinite(evals[-1]["val_bpb"])
        assert f"objective={cfg['objective']['name']}" in yaml.safe_load((d / "overrides.yaml").read_text())
    assert seen == {"ar", "mdlm"}


# ----------------------------------------------------------------------------- experiments


# the mdlm twin runs with -m slow (mdlm trains in other default tests)
@pytest.mark.parametrize("obj", ["ar", pytest.param("mdlm", marks=pytest.mark.slow)])
def test_smoke_experiment_runs(obj, sandbox_cache, tmp_path):
    cfg = compose(["experiment=smoke", "data=text_files", f"data.path={TEXT}", f"objective={obj}",
                   "train.progress=false", f"cache_dir={sandbox_cache}"])
    result = run(cfg, tmp_path / "smoke")
    assert result["step"] == cfg.train.steps
    assert math.isfinite(result["val_bpb"]) and result["val_bpb"] > 0
    assert ("val_bpb_stderr" in result) == (obj == "mdlm")
    assert records(tmp_path / "smoke", "train")[-1]["step"] == cfg.train.steps


def test_train_split_selects_the_data_and_a_bad_one_is_refused(uninterrupted, sandbox_cache, tmp_path):
    with pytest.raises(UserError, match="train.train_split"):
        run(tiny_cfg("ar", "train.train_split=bogus", cache=sandbox_cache), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    d = tmp_path / "judge"
    run(tiny_cfg("ar", "train.train_split=test", cache=sandbox_cache), d)
    a = [r["train_loss"] for r in records(uninterrupted["ar"], "train")]
    b = [r["train_loss"] for r in records(d, "train")]
    assert len(a) == len(b) and a != b  # same seed and model, other data


def test_unique_tokens_caps_the_training_data_and_is_recorded(uninterrupted, sandbox_cache, tmp_path):
    with pytest.raises(UserError, match="train.unique_tokens"):
        run(tiny_cfg("ar", "train.unique_tokens=100000000", cache=sandbox_cache), tmp_path / "big")
    assert not (tmp_path / "big").exists()
    d = tmp_path / "rep"
    cfg = tiny_cfg("ar", "train.unique_tokens=200", cache=sandbox_cache)
    run(cfg, d)
    meta = records(d, "meta")[0]
    assert meta["unique_tokens"] == 200 > cfg.train.seq_len
    assert records(uninterrupted["ar"], "meta")[0]["unique_tokens"] > 200  # the whole split
    a = [r["train_loss"] for r in records(uninterrupted["ar"], "train")]
    b = [r["train_loss"] for r in records(d, "train")]
    assert len(a) == len(b) and a != b


def test_an_moe_run_logs_its_auxiliary_loss(uninterrupted, sandbox_cache, tmp_path):
    d = tmp_path / "moe"
    run(tiny_cfg("ar", "model=tiny_moe", cache=sandbox_cache), d)
    train = records(d, "train")
    assert train and all(r["aux_loss"] > 0 for r in train)
    assert all("aux_loss" not in r for r in records(uninterrupted["ar"], "train"))  # dense: none


def test_an_objective_of_several_terms_logs_each_and_they_add_up(uninterrupted, sandbox_cache, tmp_path):
    d = tmp_path / "hybrid"
    run(tiny_cfg("mdlm", "objective.mask_kind=causal", "objective.ar_weight=0.5", "+model.logit_shift=true",
                 cache=sandbox_cache), d)
    train = records(d, "train")
    assert len(train) == 6
    for r in train:
        assert r["loss_ar_nll"] > 0 and r["loss_nelbo"] > 0
        assert r["loss_nelbo"] + 0.5 * r["loss_ar_nll"] == pytest.approx(r["train_loss"], rel=1e-5)
    for obj in ("ar", "mdlm"):  # one term: train_loss says it all
        assert not any(k.startswith("loss_") for r in records(uninterrupted[obj], "train") for k in r)


def test_epochs_set_the_steps_that_read_the_unique_data_that_many_times():
    from omegaconf import OmegaConf

    from sandbox.core.build import resolve_steps

    def cfg(**train):
        base = {"steps": 7, "flop_budget": None, "batch_size": 8, "seq_len": 128, "unique_tokens": 8192,
                "epochs": None}
        return OmegaConf.create({"train": {**base, **train}})

    assert resolve_steps(cfg(), 1.0) == 7                                  # no epochs: train.steps
    assert resolve_steps(cfg(epochs=256), 1.0) == 256 * 8192 // 1024      # 8 steps an epoch
    assert resolve_steps(cfg(epochs=0.01), 1.0) == 1                       # at least one step
    for bad, msg in (({"epochs": 4, "unique_tokens": None}, "train.epochs needs train.unique_tokens"),
                     ({"epochs": 4, "flop_budget": 1e12}, "train.epochs and train.flop_budget both set"),
                     ({"epochs": 0}, "train.epochs=0 must be positive"),
                     ({"epochs": "many"}, "train.epochs='many' must be a number")):
        with pytest.raises(UserError, match=msg):
            resolve_steps(cfg(**bad), 1.0)
