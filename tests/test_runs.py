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
