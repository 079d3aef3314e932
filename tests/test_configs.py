"""Every config file in conf/ composes, and every ``_target_`` in it instantiates.

Options are discovered by globbing ``conf/<group>/*.yaml``, so a new config is covered
without editing this file.
"""

from __future__ import annotations

import hydra
import pytest
from conftest import CONF, TEXT, compose
from flax import nnx
from omegaconf import OmegaConf

from sandbox.data import ByteTokenizer

TARGET_GROUPS = ("data", "tokenizer", "model", "objective")
# groups whose options are not selected with group=option from the main config
NOT_SELECTABLE = {"hydra"}


def _options() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CONF.glob("*/**/*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group.split("/")[0] in NOT_SELECTABLE:
            continue
        out.append((group, path.stem))
    return out


OPTIONS = _options()


def test_the_glob_finds_every_group():
    groups = {g for g, _ in OPTIONS}
    assert {"data", "tokenizer", "model", "objective", "optim", "experiment"} <= groups
    assert ("data", "text_files") in OPTIONS and ("experiment", "smoke") in OPTIONS


def test_main_config_composes_with_defaults():
    cfg = compose()
    for group in TARGET_GROUPS:
        assert "_target_" in cfg[group], group
    assert cfg.train.eval_batch_size == cfg.train.batch_size  # interpolation resolves
    OmegaConf.to_container(cfg, resolve=True)


def _instantiate(cfg, group):
    node = cfg[group]
    if group == "model":
        # abstract build: runs every constructor check without allocating the weights
        return nnx.eval_shape(lambda: hydra.utils.instantiate(node, vocab_size=260, rngs=nnx.Rngs(0)))
    return hydra.utils.instantiate(node)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_config_composes_and_instantiates(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "text_files"):
        overrides.append(f"data.path={TEXT}")
    cfg = compose(overrides)
    if cfg.data.get("path", None) == "???":  # an experiment that selects text_files
        cfg = compose([*overrides, f"data.path={TEXT}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    # the group's own node, or for a global experiment every node with a target
    if group in TARGET_GROUPS:
        assert "_target_" in cfg[group], f"conf/{group}/{option}.yaml composes to a node without _target_"
    groups = [group] if group in TARGET_GROUPS else [g for g in TARGET_GROUPS if "_target_" in cfg[g]]
    built = {g: _instantiate(cfg, g) for g in groups}
    if "objective" in built:
        tok = ByteTokenizer()
        obj = built["objective"].bind(tok)
        assert obj.name == cfg.objective.name
        model = _instantiate(compose(), "model")  # the default backbone serves every objective
        obj.check(model, tok)
    if "model" in built:
        model = built["model"]
        assert model.vocab_size == 260
        assert set(model.supported_masks) >= {"causal", "bidirectional"}
    if group == "data" and option == "text_files":
        docs = list(built["data"].documents())
        assert len(docs) == 5 and all(d.text for d in docs)
    if group == "optim":
        from sandbox.optim import make_optimizer

        tx, sched = make_optimizer(cfg.optim, 100)
        assert float(sched(0)) == 0.0 and float(sched(50)) > 0.0
