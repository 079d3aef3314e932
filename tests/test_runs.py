"""Run folders written before the package move still load and resume.

Older sandboxes wrote ``objective.schedule: linear`` (+ ``power``) where the config now holds
a node of the ``objective/schedule`` group, and ``sandbox.data.edits.*`` class paths that
moved to ``sandbox.tasks.edits``. ``sandbox.core.runs.upgrade_config`` rewrites both when a
folder is read; these tests turn a fresh run's config.yaml back into the old spelling and
check that sampling loads it and that the trainer resumes it."""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY, compose
from omegaconf import OmegaConf

from sandbox.core.errors import UserError
from sandbox.core.runs import load_run, upgrade_config


def _old_spelling(run_dir):
    path = run_dir / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    sched = cfg["objective"].pop("schedule")
    cfg["objective"]["schedule"] = sched["_target_"].rsplit(".", 1)[-1].lower()
    cfg["objective"]["power"] = sched.get("power", 2.0)
    cfg["objective"].pop("prompt_attention")  # settings added since: absent from older folders
    cfg["train"].pop("prefetch")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def test_upgrade_rewrites_schedules_and_moved_targets():
    old = OmegaConf.create({"objective": {"_target_": "sandbox.objectives.MDLM", "schedule": "polynomial",
                                          "power": 3.0},
                            "data": {"_target_": "sandbox.tasks.edits.task.EditsTask",
                                     "source": {"_target_": "sandbox.data.edits.StdlibEdits", "seed": 0}}})
    new = upgrade_config(old)
    assert new.objective.schedule == {"_target_": "sandbox.objectives.schedules.Polynomial", "power": 3.0}
    assert "power" not in new.objective
    assert new.data.source._target_ == "sandbox.tasks.edits.StdlibEdits"
    with pytest.raises(UserError, match="objective.schedule=sigmoid"):
        upgrade_config(OmegaConf.create({"objective": {"schedule": "sigmoid"}}))


def test_an_old_run_folder_loads_and_resumes(tmp_path, sandbox_cache):
    from sandbox.train import run

    run_dir = tmp_path / "old"
    short = [o for o in TINY if not o.startswith("train.steps")]
    run(compose(["objective=mdlm", *short, "train.steps=3"]), run_dir)
    before = load_run(run_dir)
    _old_spelling(run_dir)
    assert isinstance(yaml.safe_load((run_dir / "config.yaml").read_text())["objective"]["schedule"], str)
    loaded = load_run(run_dir)
    assert loaded.step == before.step == 3
    assert type(loaded.objective.schedule).__name__ == "Linear"
    # resuming the same run (now longer runs are refused, the same settings continue)
    with pytest.raises(UserError, match="train.steps"):
        run(compose(["objective=mdlm", *short, "train.steps=6"]), run_dir)
    out = run(compose(["objective=mdlm", *short, "train.steps=3"]), run_dir)
    assert out["step"] == 3


# --- warm start (train.init_from) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_run(tmp_path_factory, sandbox_cache):
    from sandbox.train import run

    d = tmp_path_factory.mktemp("warm") / "source"
    run(compose(["objective=ar", *[o for o in TINY if not o.startswith("train.steps")], "train.steps=3"]), d)
    return d


def _built(*overrides):
    from sandbox.core.build import build

    return build(compose(["objective=mdlm", *TINY, *overrides]))


def test_warm_start_loads_exactly_the_source_weights(source_run):
    import jax
    import numpy as np

    from sandbox.core.runs import warm_start

    b = _built(f"train.init_from={source_run}")
    fresh = jax.tree.leaves(b.params)
    rec = warm_start(b.cfg, b)
    assert rec == {"run": str(source_run), "step": 3, "weights": "ema"}
    src = load_run(source_run, weights="ema")
    for a, s in zip(jax.tree.leaves(b.params), jax.tree.leaves(src.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(s))
    assert any(not np.array_equal(np.asarray(a), np.asarray(f)) for a, f in
               zip(jax.tree.leaves(b.params), fresh, strict=True))  # not the seed's weights
    b2 = _built(f"train.init_from={source_run}", "train.init_weights=raw")
    warm_start(b2.cfg, b2)
    raw = load_run(source_run, weights="raw")
    for a, s in zip(jax.tree.leaves(b2.params), jax.tree.leaves(raw.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(s))


def test_a_warm_started_run_records_its_source(source_run, tmp_path):
    import json

    from sandbox.train import run

    d = tmp_path / "warm"
    short = [o for o in TINY if not o.startswith("train.steps")]
    run(compose(["objective=mdlm", *short, "train.steps=2", f"train.init_from={source_run}"]), d)
    meta = json.loads((d / "metrics.jsonl").read_text().splitlines()[0])
    assert meta["init_from"] == {"run": str(source_run), "step": 3, "weights": "ema"}


@pytest.mark.parametrize("extra,words", [
    (["train.init_from={tmp}/missing"], "no such run folder"),
    (["model.d_model=48"], "another model shape"),
    (["train.init_weights=best"], "train.init_weights"),
])
def test_warm_start_refuses_in_one_line(source_run, tmp_path, extra, words):
    from sandbox.core.runs import warm_start

    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    if not any(e.startswith("train.init_from") for e in extra):
        extra.append(f"train.init_from={source_run}")
    b = _built(*extra)
    with pytest.raises(UserError, match=words) as e:
        warm_start(b.cfg, b)
    assert "\n" not in str(e.value)


def test_warm_start_refuses_another_tokenizer(source_run, monkeypatch):
    from sandbox.core import runs

    b = _built(f"train.init_from={source_run}")
    other = dict(b.tokenizer.describe(), fingerprint="another")
    monkeypatch.setattr(b.tokenizer, "describe", lambda: other)  # this run only, not the source
    with pytest.raises(UserError, match="tokenizer"):
        runs.warm_start(b.cfg, b)
