"""Preemption and crashes: SIGKILL at a random moment, SIGTERM, a crash mid-save, a corrupt
newest checkpoint. Training runs are real ``python -m sandbox.train`` processes; they share
a persistent XLA compilation cache, so only the first one compiles (same executables,
same numbers, a third of the time)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import pytest
from conftest import REPO, TINY, assert_same_curve

from sandbox.core.checkpoint import Checkpointer

# 12 steps, a checkpoint every 2: a kill lands before, between or during checkpoints
LONG = [o for o in TINY if not o.startswith(("train.steps", "train.ckpt_every", "train.eval_every"))] + [
    "objective=mdlm", "train.steps=12", "train.ckpt_every=2", "train.eval_every=6"]


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


def start(run_dir: Path, cache: Path, xla_cache: Path) -> subprocess.Popen:
    env = {**os.environ, "SANDBOX_CACHE": str(cache), "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(xla_cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([sys.executable, "-m", "sandbox.train", *LONG, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(run_dir: Path, cache: Path, xla_cache: Path) -> subprocess.CompletedProcess:
    p = start(run_dir, cache, xla_cache)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "train":
            out.append(r["step"])
    return out


def wait_for_step(p: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while max(train_steps(run_dir), default=0) < step:
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() - t0 < timeout, "the run never got there"
        time.sleep(0.01)


def ckpt_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sandbox_cache, xla_cache) -> Path:
    d = tmp_path_factory.mktemp("preempt") / "uninterrupted"
    finish(d, sandbox_cache, xla_cache)
    assert max(train_steps(d)) == 12 and ckpt_steps(d) == [10, 12]
    return d


def test_sigkill_at_a_random_moment_then_resume_matches_an_uninterrupted_run(reference, sandbox_cache,
                                                                             xla_cache, tmp_path):
    seed = int(os.environ.get("PREEMPT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    at, delay = rng.randint(1, 10), rng.uniform(0, 0.3)  # after step `at`, somewhere in the next steps
    d = tmp_path / "killed"
    p = start(d, sandbox_cache, xla_cache)
    wait_for_step(p, d, at)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, f"finished before the kill (seed {seed})"
    killed_at = max(train_steps(d), default=0)
    finish(d, sandbox_cache, xla_cache)
    assert_same_curve(reference, d)
    assert ckpt_steps(d) == [10, 12], f"seed {seed}"
    print(f"PREEMPT_SEED={seed}: killed after step {killed_at}")


def test_sigterm_leaves_a_restorable_checkpoint_and_exits_cleanly(reference, sandbox_cache, xla_cache,
                                                                   tmp_path):
    from sandbox.core.runs import load_run

    d = tmp_path / "term"
    p = start(d, sandbox_cache, xla_cache)
    wait_for_step(p, d, 3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "stopped by signal 15" in err and "checkpoint saved" in err
    last = max(train_steps(d))
    assert 3 <= last < 12 and ckpt_steps(d)[-1] == last  # saved the step it stopped at
    assert not list((d / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    loaded = load_run(d)
    assert loaded.step == last


def test_slurm_warning_signal_stops_then_hands_over_to_the_previous_handler():
    """USR2 (SLURM's pre-timeout signal under submitit) sets the stop flag like SIGTERM; after
    the checkpoint the trainer calls the handler that was there before (submitit's requeue)."""
    from sandbox.core.preempt import Stop as _Stop

    calls = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with _Stop() as stop:
            assert not stop.stopped()
            signal.raise_signal(signal.SIGUSR2)
            assert stop.stopped() and calls == []  # nothing handed over before the checkpoint
        stop.chain()
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not stop._handle  # restored on exit
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path):
    """Orbax writes a step into <step>.orbax-checkpoint-tmp/ and renames it when complete: a
    half-written step is never listed; readers leave it, the trainer deletes it on start."""
    ck = Checkpointer(tmp_path / "checkpoints", owner=True)
    ck.save(1, {"a": jnp.arange(4.0)})
    ck.save(2, {"a": jnp.arange(4.0) + 1})
    ck.close()
    partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
    (partial / "default").mkdir(parents=True)
    (partial / "default" / "_METADATA").write_text("{trunc")
    reader = Checkpointer(tmp_path / "checkpoints")
    state, step = reader.restore({"a": jnp.zeros(4)})
    reader.close()
    assert step == 2 and state["a"].tolist() == [1.0, 2.0, 3.0, 4.0] and partial.exists()
    ck = Checkpointer(tmp_path / "checkpoints", owner=True)
    assert not partial.exists() and ck.steps() == [1, 2]
    ck.save(3, state)  # the same step again, under the same temporary name
    ck.close()
    assert ck.steps() == [2, 3]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference, sandbox_cache, xla_cache,
                                                                    tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(reference, d)
    for f in (d / "checkpoints" / "12" / "default").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00garbage")
    err = finish(d, sandbox_cache, xla_cache).stderr
    assert "warning:" in err and "12 unreadable" in err and "falling back to step 10" in err, err[-3000:]
    assert ckpt_steps(d) == [10, 12]  # step 12 trained again from 10 and saved anew
    assert len(list((d / "checkpoints-unreadable").iterdir())) == 1
    assert_same_curve(reference, d)


# ----------------------------------------------------------------------------- cluster launch

def _has_submitit() -> bool:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return False
    return True


needs_submitit = pytest.mark.skipif(not _has_submitit(), reason="needs the [slurm] extra")


def _launcher(conf: Path, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


@needs_submitit
def test_launchers_compose_and_site_settings_come_from_the_ignored_local_file(tmp_path):
    slurm = _launcher(REPO / "conf", "hydra/launcher=slurm")
    assert slurm._target_.endswith("SlurmLauncher") and slurm.signal_delay_s > 0 and slurm.max_num_timeout > 0
    local = _launcher(REPO / "conf", "hydra/launcher=local")
    assert local._target_.endswith("LocalLauncher")
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    site = conf / "hydra" / "launcher" / "cluster"
    shutil.copy(site / "local.yaml.example", site / "local.yaml")
    slurm = _launcher(conf, "hydra/launcher=slurm")
    assert (slurm.partition, slurm.account, slurm.gpus_per_node) == ("gpu", "my-project", 8)
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/hydra/launcher/cluster/local.yaml"],
                             cwd=REPO)
    assert ignored.returncode == 0, "the site file must be git-ignored"


def test_a_submitit_launcher_without_the_extra_is_one_line(monkeypatch):
    from sandbox.core.cli import check_launcher
    from sandbox.core.errors import UserError

    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)  # import fails
    check_launcher(["-m", "objective=ar,mdlm"])  # the basic launcher needs nothing
    with pytest.raises(UserError, match=r"hydra/launcher=slurm needs hydra-submitit-launcher.*\[slurm\]"):
        check_launcher(["-m", "objective=ar,mdlm", "hydra/launcher=slurm"])


@pytest.mark.slow
@needs_submitit
def test_a_sweep_through_the_local_submitit_launcher(sandbox_cache, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith(("train.steps", "train.eval_every", "train.ckpt_every"))]
    env = {**os.environ, "SANDBOX_CACHE": str(sandbox_cache), "JAX_PLATFORMS": "cpu"}
    args = ["-m", "objective=ar,mdlm", *tiny, "train.steps=2", "train.eval_every=2", "train.ckpt_every=2",
            "hydra/launcher=local", f"hydra.sweep.dir={sweep}"]
    p = subprocess.run([sys.executable, "-m", "sandbox.train", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert runs == ["0-ar-tiny", "1-mdlm-tiny"]
    for name in runs:
        assert ckpt_steps(sweep / name) == [2] and max(train_steps(sweep / name)) == 2
