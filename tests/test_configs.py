"""Every config file in conf/ composes, and every ``_target_`` in it instantiates.

Options are discovered by globbing ``conf/<group>/*.yaml``, and each group is composed
through the primary config (``conf/*.yaml``: config, sample, evaluate) whose defaults list
selects it, so a new config or a new command's group is covered without editing this file.
"""

from __future__ import annotations

import hydra
import pytest
import yaml
from conftest import CONF, TEXT, compose
from flax import nnx
from omegaconf import OmegaConf

from sandbox.data import ByteTokenizer

TARGET_GROUPS = ("data", "tokenizer", "model", "objective")
# groups whose options are not selected with group=option from the main config; conf/pretrained/
# is no Hydra group but the registry of named GGUF files that sandbox.core.pretrained reads
NOT_SELECTABLE = {"hydra", "pretrained", "hardware"}  # read by code (analysis/roofline.py), not composed


def _options() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CONF.glob("*/**/*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group.split("/")[0] in NOT_SELECTABLE:
            continue
        out.append((group, path.stem))
    return out


OPTIONS = _options()


def _primaries() -> dict[str, str]:
    """group -> the first primary config (``config`` first) whose defaults list selects it."""
    names = sorted((p.stem for p in CONF.glob("*.yaml")), key=lambda n: (n != "config", n))
    out = {}
    for name in names:
        for entry in yaml.safe_load((CONF / f"{name}.yaml").read_text()).get("defaults", []):
            if isinstance(entry, dict):
                for key in entry:
                    if not key.startswith("override "):
                        out.setdefault(key.split("@")[0], name)
    return out


def _nested() -> dict[str, tuple[str, str]]:
    """Nested group (``objective/schedule``) -> (parent group, an option of it that selects it)."""
    out = {}
    for path in sorted(CONF.glob("*/*.yaml")):
        parent = path.parent.name
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []) or []:
            if isinstance(entry, dict):
                for key in entry:
                    out.setdefault(f"{parent}/{key}", (parent, path.stem))
    return out


NESTED = _nested()
PRIMARY = {**_primaries(), **{g: "config" for g in NESTED}}


def test_the_glob_finds_every_group():
    groups = {g for g, _ in OPTIONS}
    assert {"data", "tokenizer", "model", "objective", "optim", "experiment", "sampler", "eval"} <= groups
    assert ("data", "text_files") in OPTIONS and ("experiment", "smoke") in OPTIONS
    assert PRIMARY["sampler"] in ("sample", "evaluate") and PRIMARY["eval"] == "evaluate"
    assert {g for g in groups if g not in NOT_SELECTABLE} <= set(PRIMARY), "a group no config selects"
    assert NESTED.get("objective/schedule", ("", ""))[0] == "objective"


def test_every_pretrained_entry_names_a_wheel_and_a_file():
    import importlib.util

    from sandbox.core import pretrained

    entries = sorted(CONF.glob("pretrained/*.yaml"))
    assert entries and pretrained.names() == [p.stem for p in entries]
    for path in entries:
        e = yaml.safe_load(path.read_text())
        assert set(e) == {"install", "package", "file"}, path
        assert "==" in e["install"] and e["file"].endswith(".gguf"), path  # a pinned wheel, a GGUF file
        assert importlib.util.find_spec(e["package"]) is None or pretrained.resolve(path.stem).is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_primary_config_composes_with_its_defaults(name):
    cfg = compose(config_name=name)
    OmegaConf.to_container(cfg, resolve=True)


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
    if group in NESTED:  # e.g. objective/schedule: selected by an objective that has one
        overrides.insert(0, "{}={}".format(*NESTED[group]))
    if (group, option) == ("data", "text_files"):
        overrides.append(f"data.path={TEXT}")
    primary = PRIMARY[group]
    cfg = compose(overrides, config_name=primary)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if primary != "config":
        _check_command_group(cfg, group, option)
        return
    if cfg.data.get("path", None) == "???":  # an experiment that selects text_files
        cfg = compose([*overrides, f"data.path={TEXT}"])
    # the group's own node, or for a global experiment every node with a target
    if group in TARGET_GROUPS:
        assert "_target_" in cfg[group], f"conf/{group}/{option}.yaml composes to a node without _target_"
    groups = [group] if group in TARGET_GROUPS else [g for g in TARGET_GROUPS if "_target_" in cfg[g]]
    built = {g: _instantiate(cfg, g) for g in groups}
    if "objective" in built:
        tok = ByteTokenizer()
        obj = built["objective"].bind(tok)
        assert obj.name == cfg.objective.name
        # the experiment's own backbone where it sets one (a hybrid needs its logit shift), else
        # the default backbone, which serves every objective
        model = built["model"] if "model" in built else _instantiate(compose(), "model")
        obj.check(model, tok)
    if "model" in built:
        model = built["model"]
        assert model.vocab_size == 260
        assert set(model.supported_masks) >= {"causal", "bidirectional"}
    if group == "data" and option == "text_files":
        docs = list(built["data"].documents())
        assert len(docs) == 5 and all(d.text for d in docs)
    if group == "optim":
        from sandbox.core.optim import make_optimizer

        tx, sched = make_optimizer(cfg.optim, 100)
        assert float(sched(0)) == 0.0 and float(sched(50)) > 0.0


def _check_command_group(cfg, group, option):
    """Groups of the sample / evaluate commands: samplers and evaluations."""
    node = cfg[group]
    assert "_target_" in node, f"conf/{group}/{option}.yaml composes to a node without _target_"
    if group == "sampler":
        sampler = hydra.utils.instantiate(node).bind(ByteTokenizer())
        assert sampler.name == option and getattr(sampler, "mask_id", 0) != -1
        assert getattr(sampler, "bos_id", 0) != -1
        sampler.check(family=sampler.family, length=128, prompt_len=8)
    elif group == "eval":
        assert callable(hydra.utils.instantiate(node, _partial_=True))
