"""The one build recipe: a composed config -> data, tokenizer, model, objective, optimizer, state.

Every command that needs a model goes through here: the trainer, the run loader
(``sandbox.core.runs``), every benchmark and sampling. So a run reloads exactly as it was
trained, a benchmark times exactly the trainer's step, and each input check (sequence
length against ``model.max_len``, objective against backbone, batch against devices)
is written once.

Order (each step may refuse the config with a one-line ``UserError``)::

    compose(overrides)             the checked Hydra config (benchmarks and tests; the entry
                                   points get theirs from @hydra.main)
    layout(cfg.mesh)               the device mesh; the batch must divide over it
    build_data(cfg)                prepared corpus (or a task's batch source) and its tokenizer
    build_model(cfg, tokenizer)    the backbone, vocabulary from the tokenizer
    check_seq_len(...)             train.seq_len <= model.max_len
    build_objective(cfg, ...)      bound to the tokenizer's special ids; checks the pairing
    resolve_steps / make_optimizer steps from train.steps or train.flop_budget
    split_model + init_state       the train state {params, ema, opt, step} on the layout

:func:`build` runs the sequence and returns a :class:`Built`; a caller that has no corpus
(the benchmarks time random tokens) passes its own tokenizer and ``data=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from sandbox.core import flops as flops_lib
from sandbox.core.cli import CONF_DIR, check_overrides, instantiate, require_int
from sandbox.core.errors import UserError
from sandbox.core.mesh import Layout, build_layout, resolve_attention, resolve_matmul
from sandbox.core.optim import make_optimizer
from sandbox.data import prepare
from sandbox.data.batches import LMBatches
from sandbox.models import cpu_kernels


def compose(overrides=(), config_name: str = "config"):
    """The config ``python -m sandbox.<entry> <overrides>`` would run with (checked first, so
    an unknown option or key is one line)."""
    overrides = list(overrides)
    check_overrides(overrides, config_name)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


# --- the pieces -------------------------------------------------------------------------------
def build_data(cfg, progress: bool = False):
    """(data, tokenizer): a prepared corpus (``sandbox.data.Prepared``), or the data config's
    own batch source when it has one (a task such as ``data=stdlib_edits``)."""
    corpus = instantiate(cfg.data, "data")
    tokenizer = instantiate(cfg.tokenizer, "tokenizer")
    if hasattr(corpus, "batch_source"):
        return corpus.batch_source(tokenizer, cfg.cache_dir, progress=progress), tokenizer
    data = prepare(corpus, tokenizer, cfg.cache_dir, progress=progress)
    return data, data.tokenizer


def build_batches(cfg, data, seq_len: int):
    """The trainer's batch source for ``data`` (``LMBatches`` for a prepared corpus; a task's
    conditional source as it is)."""
    t = cfg.train
    split = str(t.get("train_split", "train"))
    unique = (None if t.get("unique_tokens") is None
              else require_int(t, "unique_tokens", "train.unique_tokens", minimum=seq_len + 1))
    if not getattr(data, "conditional", False):
        return LMBatches(data, split, seq_len, unique)
    data.check(seq_len)
    if split != "train" or unique is not None:
        raise UserError("train.train_split / train.unique_tokens: not supported with conditional data "
                        f"({data.manifest.get('corpus')}); leave them at train / null")
    return data


def check_fields(objective, batches, data_name: str) -> None:
    """Refuse, in one line, an objective that cannot read the batches' fields (a conditional
    source with an unconditional objective, a format's own fields with an objective that does
    not know them) or that needs fields the batches lack."""
    fields = tuple(getattr(batches, "fields", ("cond",) if getattr(batches, "conditional", False) else ()))
    if fields and not getattr(objective, "conditional", False):
        raise UserError(f"objective={objective.name} does not train on conditional data ({data_name}); "
                        "pick an objective that does")
    extra = [f for f in fields if f not in objective.batch_fields]
    if extra:
        raise UserError(f"objective={objective.name} cannot read the batch fields {', '.join(extra)} of "
                        f"{data_name}; pick the objective that format trains (e.g. data.format=native "
                        "needs objective=edit_mdlm)")
    missing = [f for f in objective.required_fields if f not in fields]
    if missing:
        raise UserError(f"objective={objective.name} needs the batch fields {', '.join(missing)}, which "
                        f"{data_name} does not provide (objective=edit_mdlm needs data=stdlib_edits "
                        "data.format=native)")


def build_model(cfg, tokenizer, seed: int):
    """The backbone, its vocabulary from the tokenizer and ``attention`` / ``matmul=auto``
    resolved for the backend it will run on."""
    kw, dtype = {}, str(cfg.model.get("dtype") or "float32")
    if cfg.model.get("attention") in ("auto", "fused"):
        kw["attention"] = resolve_attention(str(cfg.model.attention), dtype,
                                            fused_ok=lambda: cpu_kernels.status()[0])
    if cfg.model.get("matmul") in ("auto", "blas"):
        kw["matmul"] = resolve_matmul(str(cfg.model.matmul), dtype,
                                      mkl_ok=lambda: cpu_kernels.blas() == "mkl")
    node = cfg.model
    if "weights" in node:  # where the initial weights come from (sandbox.core.runs.warm_start), not an option
        node = OmegaConf.masked_copy(node, [k for k in node if k != "weights"])
    return instantiate(node, "model", vocab_size=tokenizer.vocab_size, rngs=nnx.Rngs(seed), **kw)


def check_seq_len(seq_len: int, model, field: str = "train.seq_len") -> None:
    if seq_len > model.max_len:
        raise UserError(f"{field}={seq_len} exceeds model.max_len={model.max_len}; "
                        f"raise model.max_len or lower {field}")


def build_objective(cfg, model, tokenizer):
    objective = instantiate(cfg.objective, "objective").bind(tokenizer)
    objective.check(model, tokenizer)
    return objective


def split_model(model):
    """(graphdef, params). The backbones hold only Params; anything else is a bug."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise TypeError("backbone holds non-Param state; the trainer does not carry it")
    return graphdef, params


def init_state(params, tx):
    """The train state pytree {params, ema, opt, step} (unplaced; ``jax.eval_shape`` of it is
    the abstract target a checkpoint restores into)."""
    return {"params": params, "ema": jax.tree.map(jnp.copy, params), "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}


def init_sharded_state(params, tx, layout: Layout):
    """``init_state`` placed on ``layout``'s mesh: the parameters are moved there first and the
    EMA copy and optimizer moments are created in place (never whole on one device)."""
    params = layout.place(params)
    init = lambda p: init_state(p, tx)  # noqa: E731
    return jax.jit(init, out_shardings=layout.shardings(jax.eval_shape(init, params)))(params)


def resolve_steps(cfg, flops_per_token: float) -> int:
    """train.steps; or the steps that spend train.flop_budget at this model's FLOPs/token; or the
    steps that read train.unique_tokens train.epochs times (the data-repetition study: epochs, not
    steps, are the variable, so two unique-data sizes share one sweep)."""
    t = cfg.train
    if t.get("epochs") is not None:
        if t.get("flop_budget"):
            raise UserError("train.epochs and train.flop_budget both set: pick one (set the other to null)")
        if t.get("unique_tokens") is None:
            raise UserError("train.epochs needs train.unique_tokens (the data an epoch reads); set it, "
                            "or give train.steps instead")
        try:
            epochs = float(t.epochs)
        except (TypeError, ValueError):
            raise UserError(f"train.epochs={t.epochs!r} must be a number") from None
        if not epochs > 0:
            raise UserError(f"train.epochs={t.epochs} must be positive")
        unique = require_int(t, "unique_tokens", "train.unique_tokens", minimum=1)
        return max(1, round(epochs * unique / (t.batch_size * t.seq_len)))
    if t.get("flop_budget"):
        budget = float(t.flop_budget)
        if budget <= 0:
            raise UserError(f"train.flop_budget={t.flop_budget} must be positive")
        return max(1, math.ceil(budget / (flops_per_token * t.batch_size * t.seq_len)))
    return require_int(t, "steps", "train.steps", minimum=1)


# --- the recipe -------------------------------------------------------------------------------
@dataclass
class Built:
    """Everything a run is made of, before any step is taken."""

    cfg: object
    layout: Layout
    data: object            # sandbox.data.Prepared, a task's batch source, or None
    tokenizer: object
    model: nnx.Module       # initial weights (seed)
    objective: object       # bound to the tokenizer
    graphdef: object
    params: object          # nnx.State of the initial weights
    tx: object              # optax transformation
    sched: object           # step -> learning rate
    steps: int
    flops_per_token: float
    seq_len: int
    batch_size: int
    batches: object = None  # the trainer's batch source (``build_batches``), set by the trainer
    warm: dict | None = None  # where the initial weights came from (train.init_from), set by the trainer

    def init_state(self):
        """The train state placed on the layout (parameters sharded by their logical axes)."""
        return init_sharded_state(self.params, self.tx, self.layout)

    def abstract_state(self):
        """Shapes and dtypes of the train state, allocating nothing (a restore target)."""
        return jax.eval_shape(lambda p: init_state(p, self.tx), self.params)


def build(cfg, *, tokenizer=None, data: bool = True, progress: bool = False, abstract: bool = False) -> Built:
    """Run the recipe of the module doc on ``cfg``.

    ``tokenizer``: use this one and prepare no data (``data=False``; benchmarks on random
    tokens). ``abstract``: build the model with ``nnx.eval_shape`` (no arrays), to check a
    config in one line before anything is measured or written."""
    seed = require_int(cfg, "seed", "seed")
    batch_size = require_int(cfg.train, "batch_size", "train.batch_size", minimum=1)
    seq_len = require_int(cfg.train, "seq_len", "train.seq_len", minimum=2)
    layout = build_layout(cfg.get("mesh"))
    layout.check_batch(batch_size)
    corpus = None
    if data:
        corpus, tokenizer = build_data(cfg, progress=progress)
    elif tokenizer is None:
        tokenizer = instantiate(cfg.tokenizer, "tokenizer")
    make = lambda: build_model(cfg, tokenizer, seed)  # noqa: E731
    model = nnx.eval_shape(make) if abstract else make()
    check_seq_len(seq_len, model)
    objective = build_objective(cfg, model, tokenizer)
    fpt = flops_lib.train_flops_per_token(model, seq_len, objective)
    steps = resolve_steps(cfg, fpt)
    tx, sched = make_optimizer(cfg.optim, steps)
    graphdef, params = split_model(model)
    return Built(cfg=cfg, layout=layout, data=corpus, tokenizer=tokenizer, model=model, objective=objective,
                 graphdef=graphdef, params=params, tx=tx, sched=sched, steps=steps, flops_per_token=fpt,
                 seq_len=seq_len, batch_size=batch_size)
