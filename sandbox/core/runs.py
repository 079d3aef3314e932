"""Open a finished (or running) training run: its config, data, model and latest weights.

``load_run(run_dir, weights="ema") -> LoadedRun`` is what every command that reads a
trained model uses (``sandbox.sample``, ``sandbox.evaluate``, the judge of
``sandbox.eval.metrics``). It rebuilds everything from the run folder alone:

- ``<run>/config.yaml`` (the composed, resolved config the trainer wrote) is the only
  description of the run; nothing is taken from the current command line.
- data, tokenizer, model and objective come from the build recipe the trainer used
  (``sandbox.core.build``), so a run reloads exactly as it was trained. A config written
  by an older version of the sandbox is upgraded first (:func:`upgrade_config`: moved
  class paths, schedules that were strings). Prepared data is cached, so this is cheap after the first
  time. The data cache is ``$SANDBOX_CACHE`` when set, else the run's own ``cache_dir``.
- the newest readable Orbax checkpoint is restored into an *abstract* train state
  (``Built.abstract_state``): nothing but the restored arrays is allocated.
  The saved ``shapes.json`` is checked first, so a config edited after training fails with
  one line naming the first differing parameter.
- ``weights="ema"`` (default, what evaluation reads) or ``"raw"`` (the optimizer's
  parameters).

Every problem with the folder (missing, not a run, never checkpointed) is a one-line
:class:`~sandbox.core.errors.UserError`. :func:`check_same_run` is the trainer's guard on
resume: a resumed run must keep every setting that changes its trajectory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flax import nnx
from omegaconf import DictConfig, OmegaConf, open_dict

from sandbox.core import pretrained
from sandbox.core.build import build
from sandbox.core.checkpoint import check_compatible, describe_state, restore_run
from sandbox.core.cli import CONF_DIR
from sandbox.core.errors import UserError

WEIGHTS = ("ema", "raw")


@dataclass
class LoadedRun:
    """A trained run, ready to sample from or score with.

    ``model`` is the backbone with the restored weights merged in; ``graphdef`` and
    ``params`` are its split form for jitted pure functions (``nnx.merge(graphdef, params)``).
    """

    dir: Path
    cfg: DictConfig
    data: object            # sandbox.data.Prepared
    tokenizer: object       # sandbox.data.Tokenizer
    model: nnx.Module
    graphdef: object
    params: object          # nnx.State of the chosen weights
    objective: object       # bound objective (sandbox.objectives.*)
    step: int
    weights: str

    @property
    def seq_len(self) -> int:
        return int(self.cfg.train.seq_len)

    @property
    def train_split(self) -> str:
        return str(self.cfg.train.get("train_split", "train"))

    def describe(self) -> dict:
        """What a result row records about the model it came from."""
        return {"run": str(self.dir), "step": self.step, "weights": self.weights,
                **self.objective.describe(), "model": str(self.cfg.model.get("name", "?")),
                "tokenizer": self.tokenizer.name, "data": self.data.manifest.get("corpus")}


def read_config(run_dir) -> tuple[Path, DictConfig]:
    """(path, config) of a run folder; UserError when it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run_dir={run_dir}: no such folder; pass a run folder written by "
                        "python -m sandbox.train (its hydra.run.dir)")
    if not (path / "config.yaml").is_file():
        raise UserError(f"run_dir={run_dir}: no config.yaml, so not a run folder written by "
                        "python -m sandbox.train")
    try:
        cfg = OmegaConf.load(path / "config.yaml")
    except Exception as e:
        raise UserError(f"{path / 'config.yaml'}: unreadable ({type(e).__name__}); "
                        "the run folder is damaged") from None
    return path, cfg


def has_checkpoint(run_dir) -> bool:
    ck = Path(run_dir) / "checkpoints"
    return ck.is_dir() and any(p.name.isdigit() for p in ck.iterdir())


def load_run(run_dir, weights: str = "ema") -> LoadedRun:
    """Rebuild the run in ``run_dir`` and restore its newest checkpoint (see module doc)."""
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights!r}: choose ema or raw")
    path, cfg = read_config(run_dir)
    if not has_checkpoint(path):
        raise UserError(f"run_dir={run_dir}: no checkpoint yet; train it first "
                        f"(python -m sandbox.train ... hydra.run.dir={run_dir})")
    cfg.cache_dir = os.environ.get("SANDBOX_CACHE", cfg.get("cache_dir", ".cache/sandbox"))
    cfg.mesh = None  # a reader works on one device, whatever mesh trained the run
    upgrade_config(cfg)
    b = build(cfg)
    state, step = restore_run(path, b.abstract_state())
    if state is None:
        raise UserError(f"run_dir={run_dir}: no checkpoint yet; train it first")
    chosen = state["ema"] if weights == "ema" else state["params"]
    return LoadedRun(dir=path, cfg=cfg, data=b.data, tokenizer=b.tokenizer,
                     model=nnx.merge(b.graphdef, chosen), graphdef=b.graphdef, params=chosen,
                     objective=b.objective, step=int(step), weights=weights)


# --- warm start -------------------------------------------------------------------------------
def warm_start(cfg, b) -> dict | None:
    """``train.init_from=RUN_DIR``: replace the seed's initial weights of ``b`` (a ``Built``) by
    another run's (``train.init_weights``: its EMA weights, default, or raw ones), refusing in
    one line a source whose tokenizer or parameter shapes differ. The optimizer starts fresh.
    Returns what the meta line records ({"run", "step", "weights"}), or None without a source.

    ``train.init_from=smollm2_135m`` (a ``conf/pretrained`` entry) or ``gguf:PATH`` (also spelled
    ``model.weights=...``) starts from a pretrained GGUF file instead (:func:`pretrained_start`)."""
    source = cfg.train.get("init_from")
    mw = cfg.model.get("weights")
    if mw not in (None, "") and source not in (None, ""):
        raise UserError(f"model.weights={mw} and train.init_from={source}: two sources of initial weights; "
                        "keep one")
    source = source if source not in (None, "") else mw
    if source is None or str(source) == "":
        return None
    if pretrained.is_spec(source):
        return pretrained_start(cfg, b, str(source))
    weights = str(cfg.train.get("init_weights", "ema"))
    if weights not in WEIGHTS:
        raise UserError(f"train.init_weights={weights!r}: choose ema or raw")
    src = Path(str(source))
    if not src.is_dir():
        raise UserError(f"train.init_from={source}: no such run folder; pass a folder written by "
                        "python -m sandbox.train")
    run = load_run(src, weights=weights)
    mine, theirs = b.tokenizer.describe(), run.tokenizer.describe()
    keys = ("name", "vocab_size", "fingerprint")
    if any(mine.get(k) != theirs.get(k) for k in keys):
        raise UserError(f"train.init_from={source}: its tokenizer ({theirs.get('name')}, vocabulary "
                        f"{theirs.get('vocab_size')}) is not this run's ({mine.get('name')}, "
                        f"{mine.get('vocab_size')}); warm-start from a run with the same tokenizer")
    check_compatible(describe_state(run.params), describe_state(b.params), f"train.init_from={source}")
    b.params = run.params
    return {"run": str(src), "step": run.step, "weights": weights}


def pretrained_start(cfg, b, source: str) -> dict:
    """Initial weights of ``b`` from a llama GGUF file (``sandbox.models.pretrained``); the run
    must use the file's tokenizer (``tokenizer=smollm2``) and shapes (``model=llama``)."""
    from sandbox.models.pretrained import check_llama_options, llama_params

    g = pretrained.open_gguf(source, "train.init_from")
    tok = b.tokenizer
    if getattr(tok, "name", None) != "gguf" or g.fingerprint() not in tok.fingerprint():
        raise UserError(f"train.init_from={source}: the run's tokenizer ({tok.name}, vocabulary "
                        f"{tok.vocab_size}) "
                        f"is not the file's; set tokenizer=smollm2 (tokenizer.weights={source})")
    check_llama_options(b.model, g, f"train.init_from={source}")
    arrays = g.arrays(cfg.get("cache_dir"))
    params = llama_params(b.model, arrays, f"train.init_from={source} ({g.path.name})")
    check_compatible(describe_state(params), describe_state(b.params), f"train.init_from={source}")
    b.params = params
    return {"weights": source, "file": str(g.path)}


# --- configs written by earlier versions ----------------------------------------------------
# Class paths that moved (old prefix -> new prefix). A run folder keeps the config it was
# trained with; this is how it still loads after the code moved.
MOVED_TARGETS = {"sandbox.data.edits.": "sandbox.tasks.edits."}
SCHEDULE_CONF = Path(CONF_DIR) / "objective" / "schedule"


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """Rewrite, in place, what an older config spells differently: moved ``_target_`` paths,
    ``objective.schedule: <name>`` (+ ``objective.power``) that became a node of the
    ``objective/schedule`` group, and the layout a ``data.format=native`` run was saved with
    before ``data.native_twin`` existed (false)."""
    def walk(node):
        if OmegaConf.is_dict(node):
            for k in list(node.keys()):
                v = node[k]
                if k == "_target_" and isinstance(v, str):
                    for old, new in MOVED_TARGETS.items():
                        if v.startswith(old):
                            node[k] = new + v[len(old):]
                else:
                    walk(v)

    walk(cfg)
    data = cfg.get("data")
    if data is not None and data.get("format") == "native" and "native_twin" not in data:
        with open_dict(data):
            data.native_twin = False  # saved before the twin layout: the prompt held the function
    obj = cfg.get("objective")
    if obj is not None and isinstance(obj.get("schedule"), str):
        name = obj.schedule
        path = SCHEDULE_CONF / f"{name}.yaml"
        if not path.is_file():
            raise UserError(f"objective.schedule={name}: unknown schedule in the run's config.yaml "
                            f"(known: {', '.join(sorted(p.stem for p in SCHEDULE_CONF.glob('*.yaml')))})")
        node = OmegaConf.load(path)
        with_power = "power" in node
        with open_dict(obj):
            if with_power and obj.get("power") is not None:
                node.power = obj.power
            obj.schedule = node
            obj.pop("power", None)
    return cfg


# --- resuming ---------------------------------------------------------------------------------
# Keys a resumed run may change: they affect reporting, not the trajectory.
# A checkpoint restores onto any mesh and any number of processes, so mesh and dist may change
# (the losses then differ from the original layout's only by float summation order).
RESUME_MAY_CHANGE = ("cache_dir", "train.progress", "train.prefetch", "data.em_items", "train.eval_every",
                     "train.ckpt_every",
                     "train.log_every", "train.eval_batches", "train.eval_batch_size", "train.eval_draws",
                     "mesh.", "dist.", "logger.")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


# settings added to the configs after runs were saved, with the value those runs had implicitly
# (data.native_twin: a native run saved before it had the first layout, which upgrade_config
# writes into its config; for the other formats the setting has no effect)
ADDED_WITH_DEFAULT = {"data.native_slack": 16, "objective.prompt_attention": "full", "data.native_twin": True,
                      "data.augment_renames": 0, "tokenizer.pretokenize": "gpt2",
                      "data.kind_weights": None}


def check_same_run(cfg, run_dir: Path) -> None:
    """Resuming must continue the same run: refuse a changed seed, budget, schedule, data...

    (A longer ``train.steps`` would, for instance, stretch the cosine schedule under the
    steps already taken, so the result would match no uninterrupted run.)"""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.exists():
        return
    saved_cfg = upgrade_config(OmegaConf.load(saved_path))
    saved = _flat(OmegaConf.to_container(saved_cfg, resolve=False))
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    for key in sorted(set(saved) | set(now)):
        if key.startswith(RESUME_MAY_CHANGE) or key in ("mesh", "dist", "logger"):
            continue
        if key not in saved and key in ADDED_WITH_DEFAULT and now.get(key) == ADDED_WITH_DEFAULT[key]:
            continue  # a setting added after the run started, at the value the run had implicitly
        if saved.get(key) != now.get(key):
            raise UserError(f"{key}: the run in {run_dir} was started with {saved.get(key)!r}, now "
                            f"{now.get(key)!r}; a resumed run must keep it (use a new hydra.run.dir)")
