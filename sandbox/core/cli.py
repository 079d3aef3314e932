"""Hydra entry points with one-line errors.

``hydra_entry(task, config_name)`` runs ``task(cfg)`` under ``@hydra.main`` (so run dirs,
multirun and launchers behave as Hydra documents) after checking the command-line
overrides itself: an unknown group option (``objective=foo``) or key (``train.stepz=1``)
ends with one line naming it and the choices, instead of Hydra's multi-line report.
Inside the task a :class:`~sandbox.core.errors.UserError` prints one line and exits 2.

``instantiate(node, field)`` is ``hydra.utils.instantiate`` whose failures name the
config group; ``require_int`` validates integer fields.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sandbox.core.errors import EXIT_USER_ERROR, UserError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.splitlines()[0].split())


def _group_options(group: str) -> list[str]:
    try:
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    except Exception:
        return []


def check_overrides(args: list[str], config_name: str) -> None:
    """Compose the config for each value of each override; UserError on the first bad one."""
    user = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(user)
    except Exception as e:
        raise UserError(f"cannot parse overrides: {_first_line(e)}") from None
    plain, sweeps = [], []
    for o, text in zip(parsed, user):
        if o.key_or_group == "hydra.searchpath":  # extra config folders (an objective kept outside conf/)
            plain.append(text)
            continue
        if o.key_or_group.startswith("hydra") or o.package and o.package.startswith("hydra"):
            continue
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            sweeps.append((o, values))
            plain.append(f"{o.get_key_element()}={values[0]}")
        else:
            plain.append(text)
    trials = [plain] + [
        [p if not p.startswith(o.get_key_element() + "=") else f"{o.get_key_element()}={v}" for p in plain]
        for o, values in sweeps for v in values[1:]
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for ov in trials:
            try:
                compose(config_name=config_name, overrides=ov)
            except Exception as e:
                msg = _first_line(e)
                missing = re.search(r"Could not find '([^']+)/([^'/]+)'", str(e))
                if missing:
                    group, value = missing.groups()
                    opts = _group_options(group)
                    raise UserError(f"{group}={value}: unknown option (choose one of "
                                    f"{', '.join(opts)}; configs live in conf/{group}/)") from None
                if "not in struct" in str(e) or "Could not override" in str(e):
                    key = msg.split("'")[1] if "'" in msg else msg
                    raise UserError(f"{key}: unknown config key (check the spelling; see "
                                    f"conf/{config_name}.yaml, or prefix with + to add a new key)") from None
                raise UserError(f"bad overrides: {msg}") from None
    GlobalHydra.instance().clear()


def hydra_entry(task, config_name: str = "config") -> None:
    """Validate overrides, then run ``task`` under Hydra; UserError -> one line, exit 2."""
    try:
        check_overrides(sys.argv[1:], config_name)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
    @functools.wraps(task)
    def _main(cfg):
        try:
            return task(cfg)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    _main()


def instantiate(node, field: str, **kwargs):
    """hydra.utils.instantiate(node, **kwargs); failures name the config group."""
    if node is None or "_target_" not in node:
        raise UserError(f"{field}: no _target_ in the config (pick one of the files in conf/{field}/)")
    try:
        return hydra.utils.instantiate(node, **kwargs, _convert_="all")
    except UserError:
        raise
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:  # Hydra wraps the real error
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{field}: cannot build {node['_target_']} ({_first_line(cause)}); "
                        f"check the keys in conf/{field}/") from None


def require_int(node, key: str, field: str, minimum: int | None = None) -> int:
    v = OmegaConf.select(node, key) if OmegaConf.is_config(node) else node[key]
    try:
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ValueError
        v = int(float(v))
    except (TypeError, ValueError):
        raise UserError(f"{field}={v!r} must be an integer") from None
    if minimum is not None and v < minimum:
        raise UserError(f"{field}={v} must be at least {minimum}")
    return v


SUBMITIT_LAUNCHERS = ("slurm", "local", "submitit_slurm", "submitit_local")


def check_launcher(args: list[str]) -> None:
    """``hydra/launcher=slurm|local`` needs the ``[slurm]`` extra: say so in one line."""
    chosen = [a.split("=", 1)[1] for a in args if a.lstrip("+~").startswith("hydra/launcher=")]
    if any(c in SUBMITIT_LAUNCHERS for c in chosen):
        try:
            import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        except ImportError:
            raise UserError(f"hydra/launcher={chosen[-1]} needs hydra-submitit-launcher: "
                            "pip install -e '.[slurm]'") from None


def check_sampler_overrides(args: list[str]) -> None:
    """``sampler.<key>=...`` needs ``sampler=<name>`` too: the default sampler is picked from
    the run after Hydra composes the config, so its keys do not exist yet."""
    keys = [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a]
    sub = next((k for k in keys if k.startswith("sampler.")), None)
    if sub and "sampler" not in keys:
        raise UserError(f"{sub}: name the sampler too (e.g. sampler=mdm_ancestral {sub}=...; "
                        "options live in conf/sampler/)")


def sampling_entry(task, config_name: str) -> None:
    """``hydra_entry`` for the commands that read a run and may pick its default sampler
    (``sandbox.sample``, ``sandbox.evaluate``): the sampler-override check first."""
    try:
        check_sampler_overrides(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    hydra_entry(task, config_name=config_name)
