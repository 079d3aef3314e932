"""Shared test setup: CPU only, a private data cache, and helpers to compose configs."""

from __future__ import annotations

import json
import os

# Before JAX is imported anywhere: never touch an accelerator, keep CPU runs quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEXT = FIXTURES / "text"

# Overrides that make a training run take seconds on a 2-core CPU.
TINY = [
    "data=text_files",
    f"data.path={TEXT}",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.n_kv_heads=2",
    "train.seq_len=32",
    "train.batch_size=4",
    "train.steps=6",
    "train.eval_every=3",
    "train.ckpt_every=3",
    "train.log_every=1",
    "train.eval_batches=1",
    "train.eval_draws=4",
    "train.progress=false",
]


@pytest.fixture(scope="session")
def sandbox_cache(tmp_path_factory) -> Path:
    """A session-wide prepared-data cache, also exported as SANDBOX_CACHE."""
    return tmp_path_factory.mktemp("sandbox_cache")


@pytest.fixture(scope="session", autouse=True)
def _sandbox_cache_env(sandbox_cache):
    old = os.environ.get("SANDBOX_CACHE")
    os.environ["SANDBOX_CACHE"] = str(sandbox_cache)
    yield
    if old is None:
        os.environ.pop("SANDBOX_CACHE", None)
    else:
        os.environ["SANDBOX_CACHE"] = old


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """``hydra.compose`` of ``conf/`` with ``overrides`` (no HydraConfig needed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


# --- metrics curves shared by the training and preemption tests ---------------------------
def curve(run_dir: Path) -> list[tuple]:
    """(kind, step, value) of every train loss and eval bpb, in file order."""
    out = []
    for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()):
        if r.get("kind") == "train":
            out.append(("train", r["step"], r["train_loss"]))
        elif r.get("kind") == "eval":
            out.append(("eval", r["step"], r["val_bpb"]))
    return out


def assert_same_curve(a: Path, b: Path) -> None:
    ca, cb = curve(a), curve(b)
    assert [c[:2] for c in ca] == [c[:2] for c in cb]
    for x, y in zip(ca, cb, strict=True):
        assert y[2] == pytest.approx(x[2], abs=1e-6), (x, y)


def need_cpu_kernel() -> None:
    """Skip where no C++ compiler is installed; where one is, fail if the fused CPU
    attention kernel (sandbox/models/cpu_kernels.py) does not build."""
    import shutil

    from sandbox.models import cpu_kernels

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler: the fused CPU attention kernel cannot be built here")
    ok, why = cpu_kernels.status()
    assert ok, f"the fused CPU attention kernel did not build: {why}"
