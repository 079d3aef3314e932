"""Train any backbone under any objective: ``python -m sandbox.train [overrides]``.

One loop for every objective. The step is a pure ``jax.jit`` function over the split
NNX state (``nnx.split`` once, ``nnx.merge`` inside the trace), which avoids NNX's
per-call graph traversal: ``sandbox.bench`` measures it against ``nnx.jit``.

The train state is a plain pytree ``{params, ema, opt, step}``. Batches and step keys
are pure functions of ``(seed, step)``, so a run resumed from a checkpoint continues
exactly as if never stopped. Evaluation uses the EMA weights and reports held-out bits
per byte (an upper bound, with its Monte-Carlo standard error, for diffusion).

Devices: ``mesh=single|dp|fsdp`` (``sandbox.mesh``) places the state by the parameters'
logical axes and splits every global batch over the devices; each process gathers only
its own rows of a batch. Several processes (``dist`` config, SLURM, TPU slices) share one
run folder: process 0 writes metrics and run files, every process takes part in
checkpoints, and a stop signal seen by any process stops all of them at the same step.

Everything that can be wrong with the inputs is checked before the run folder is
written; a bad input ends with one line (``sandbox.errors``) and, for a fresh run,
leaves no folder behind.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sandbox import flops as flops_lib
from sandbox.checkpoint import Checkpointer, describe_state, restore_run
from sandbox.cli import hydra_entry, instantiate, require_int
from sandbox.data import prepare
from sandbox.data.batches import LMBatches
from sandbox.errors import UserError
from sandbox.mesh import build_layout, init_distributed, is_main_process
from sandbox.optim import make_optimizer
from sandbox.runinfo import MetricsLog, read_metrics, write_run_files

LN2 = math.log(2.0)


# --- building blocks ------------------------------------------------------------------------
def build_data(cfg):
    """(data, tokenizer): a prepared corpus (``sandbox.data.Prepared``), or the data config's
    own batch source when it has one (``data=stdlib_edits``: conditional sequences)."""
    corpus = instantiate(cfg.data, "data")
    tokenizer = instantiate(cfg.tokenizer, "tokenizer")
    if hasattr(corpus, "batch_source"):
        return corpus.batch_source(tokenizer, cfg.cache_dir, progress=bool(cfg.train.progress)), tokenizer
    data = prepare(corpus, tokenizer, cfg.cache_dir, progress=bool(cfg.train.progress))
    return data, data.tokenizer


def build_batches(cfg, data, seq_len: int):
    """The trainer's batch source for ``data`` (``LMBatches`` for a prepared corpus)."""
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


def _objective_args(batch) -> tuple:
    """(tokens, {"cond": ...}) of a batch: an array, or a conditional {"tokens", "cond"} dict."""
    if isinstance(batch, dict):
        return batch["tokens"], {"cond": batch["cond"]}
    return batch, {}


def build_model(cfg, tokenizer, seed: int):
    return instantiate(cfg.model, "model", vocab_size=tokenizer.vocab_size, rngs=nnx.Rngs(seed))


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
    return {"params": params, "ema": jax.tree.map(jnp.copy, params), "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}


def init_sharded_state(params, tx, layout):
    """``init_state`` placed on ``layout``'s mesh: the parameters are moved there first and the
    EMA copy and optimizer moments are created in place (never whole on one device)."""
    params = layout.place(params)
    init = lambda p: init_state(p, tx)  # noqa: E731
    return jax.jit(init, out_shardings=layout.shardings(jax.eval_shape(init, params)))(params)


def make_train_step(graphdef, objective, tx, ema_decay: float, layout=None, state=None):
    """state, batch[B, L], key -> (state, metrics). Pure; jitted with the state donated.

    With a ``layout`` (``sandbox.mesh.Layout``) and an example ``state``, the step is jitted
    with the state's shardings in and out (batch split over the data-parallel devices, key
    and metrics replicated); it gathers the parameters once and constrains the gradients
    back to the parameters' layout (FSDP: all-gather, then reduce-scatter)."""
    p_shard = layout.shardings(state["params"]) if layout is not None else None

    def step_fn(state, batch, key):
        def loss_fn(p):
            if layout is not None:
                p = jax.lax.with_sharding_constraint(p, layout.replicated)
            tokens, kw = _objective_args(batch)
            return objective.loss(nnx.merge(graphdef, p), tokens, key, **kw)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        if layout is not None:
            grads = jax.lax.with_sharding_constraint(grads, p_shard)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
        step = state["step"] + 1
        # EMA with warm-up (decay grows like (1+n)/(10+n)) so short runs are not all init.
        d = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"], params)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
        return {"params": params, "ema": ema, "opt": opt, "step": step}, metrics

    if layout is None:
        return jax.jit(step_fn, donate_argnums=0)
    s_shard = layout.shardings(state)
    return jax.jit(step_fn, donate_argnums=0,
                   in_shardings=(s_shard, layout.batch_sharding(), layout.replicated),
                   out_shardings=(s_shard, layout.replicated))


def make_eval_fn(graphdef, objective, draws: int, layout=None):
    """params, batch[B, L], key -> per-sequence nats/token draws [K, B] (replicated on a mesh)."""

    def fn(p, batch, key):
        tokens, kw = _objective_args(batch)
        return objective.nll(nnx.merge(graphdef, p), tokens, key, draws, **kw)

    return jax.jit(fn) if layout is None else jax.jit(fn, out_shardings=layout.replicated)


def evaluate(eval_fn, params, batches, tokens_per_byte, *, key, exact: bool, layout=None) -> dict:
    """Held-out bits per byte. For a bound with K draws per sequence, the standard error is
    the Monte-Carlo error of the estimate given the data: sqrt(sum_b var_k(v[k,b]) / K) / N.
    Every process reads the same windows (``layout.full_batch`` splits them over the devices)."""
    draws = []
    for i, batch in enumerate(batches):
        k = jax.random.fold_in(key, i)
        if layout is None:
            batch = jax.tree.map(jnp.asarray, batch)
        else:
            batch, k = jax.tree.map(layout.full_batch, batch), layout.replicate(k)
        draws.append(np.asarray(eval_fn(params, batch, k)))
    v = np.concatenate(draws, axis=1).astype(np.float64)  # [K, N]
    k, n = v.shape
    nats = float(v.mean())
    scale = tokens_per_byte / LN2
    out = {"val_nats_per_token": nats, "val_bpb": nats * scale, "val_sequences": n,
           "bound": "exact" if exact else "upper"}
    if not exact:
        var = v.var(axis=0, ddof=1).sum() / k if k > 1 else float("nan")
        out["val_bpb_stderr"] = float(math.sqrt(var) / n * scale)
        out["val_draws"] = k
    return out


# --- the run --------------------------------------------------------------------------------
def _preempt_signal() -> signal.Signals:
    """SLURM's warning before a time limit, as submitit sets it up (``--signal=USR2@...``)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)


class _Stop:
    """SIGTERM / SIGINT (and SLURM's pre-timeout signal, USR2 under submitit) set a flag; the
    loop checkpoints and exits at the next step. With several processes the flag is shared
    (any process stopped stops all, at the same step), since checkpoints are collective.

    After the checkpoint, :meth:`chain` hands the signal to the handler that was installed
    before (submitit's: requeue the job), so a preempted SLURM job resumes by itself."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in {signal.SIGTERM, signal.SIGINT, _preempt_signal()}:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    def stopped(self) -> bool:
        """True on every process once any process got a signal (one tiny collective per step
        when there are several processes; nothing otherwise)."""
        if jax.process_count() == 1:
            return self.signum is not None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        if self.signum is None and flags.max() > 0:
            self.signum = int(flags.max())
        return bool(flags.max() > 0)

    def chain(self) -> None:
        old = self._old.get(self.signum)
        if callable(old) and old is not signal.default_int_handler:
            old(self.signum, None)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def resolve_steps(cfg, flops_per_token: float) -> int:
    t = cfg.train
    if t.get("flop_budget"):
        budget = float(t.flop_budget)
        if budget <= 0:
            raise UserError(f"train.flop_budget={t.flop_budget} must be positive")
        return max(1, math.ceil(budget / (flops_per_token * t.batch_size * t.seq_len)))
    return require_int(t, "steps", "train.steps", minimum=1)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Train per ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fresh = not any(run_dir.iterdir())
    main = True
    try:
        init_distributed(cfg.get("dist"))  # before anything touches a device
        main = is_main_process()
        setup = _setup(cfg, run_dir)
    except BaseException:
        if fresh and main:  # nothing half-written: a fresh run folder that failed to start goes away
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if main and (fresh or not (run_dir / "config.yaml").exists()):
        write_run_files(run_dir, OmegaConf.to_yaml(cfg, resolve=True), overrides or [], setup["shapes"])
    return _loop(cfg, run_dir, setup)


# Keys a resumed run may change: they affect reporting, not the trajectory.
# A checkpoint restores onto any mesh and any number of processes, so mesh and dist may change
# (the losses then differ from the original layout's only by float summation order).
RESUME_MAY_CHANGE = ("cache_dir", "train.progress", "train.eval_every", "train.ckpt_every",
                     "train.log_every", "train.eval_batches", "train.eval_batch_size", "train.eval_draws",
                     "mesh.", "dist.")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_same_run(cfg, run_dir: Path) -> None:
    """Resuming must continue the same run: refuse a changed seed, budget, schedule, data...

    (A longer ``train.steps`` would, for instance, stretch the cosine schedule under the
    steps already taken, so the result would match no uninterrupted run.)"""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False))
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    for key in sorted(set(saved) | set(now)):
        if key.startswith(RESUME_MAY_CHANGE):
            continue
        if saved.get(key) != now.get(key):
            raise UserError(f"{key}: the run in {run_dir} was started with {saved.get(key)!r}, now "
                            f"{now.get(key)!r}; a resumed run must keep it (use a new hydra.run.dir)")


def _setup(cfg, run_dir: Path) -> dict:
    t = cfg.train
    seed = require_int(cfg, "seed", "seed")
    batch_size = require_int(t, "batch_size", "train.batch_size", minimum=1)
    seq_len = require_int(t, "seq_len", "train.seq_len", minimum=2)
    for f in ("eval_every", "ckpt_every", "log_every", "eval_draws", "eval_batches", "eval_batch_size"):
        require_int(t, f, f"train.{f}", minimum=1)
    layout = build_layout(cfg.get("mesh"))
    layout.check_batch(batch_size)
    data, tokenizer = build_data(cfg)
    batches = build_batches(cfg, data, seq_len)
    model = build_model(cfg, tokenizer, seed)
    if seq_len > model.max_len:
        raise UserError(f"train.seq_len={seq_len} exceeds model.max_len={model.max_len}; "
                        "raise model.max_len or lower train.seq_len")
    objective = build_objective(cfg, model, tokenizer)
    if batches.conditional and not objective.conditional:
        raise UserError(f"objective={objective.name} does not train on conditional data "
                        f"({data.manifest.get('corpus')}); use objective=ar or objective=mdlm")
    fpt = flops_lib.train_flops_per_token(model, seq_len, objective)
    steps = resolve_steps(cfg, fpt)
    tx, sched = make_optimizer(cfg.optim, steps)
    graphdef, params = split_model(model)
    state = init_sharded_state(params, tx, layout)
    shapes = describe_state(state)
    main = is_main_process()
    if main and layout.name != "single":
        print(layout.describe(params))
    restored, step = restore_run(run_dir, state, check=lambda: check_same_run(cfg, run_dir), owner=True)
    if restored is not None:
        state = restored
        if main:
            print(f"resuming {run_dir} from step {step}")
    return dict(data=data, tokenizer=tokenizer, model=model, objective=objective, graphdef=graphdef,
                state=state, tx=tx, sched=sched, steps=steps, fpt=fpt, shapes=shapes,
                seed=seed, batch_size=batch_size, seq_len=seq_len, layout=layout, batches=batches)


def _loop(cfg, run_dir: Path, s: dict) -> dict:
    t = cfg.train
    batches, objective, state, layout = s["batches"], s["objective"], s["state"], s["layout"]
    steps, bs, sl, fpt = s["steps"], s["batch_size"], s["seq_len"], s["fpt"]
    main = is_main_process()
    ckpt = Checkpointer(run_dir / "checkpoints", owner=True)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main)
    start = int(state["step"])
    log.rewind(start)
    train_step = make_train_step(s["graphdef"], objective, s["tx"], float(t.ema_decay), layout, state)
    eval_fn = make_eval_fn(s["graphdef"], objective, int(t.eval_draws), layout)
    base_key = jax.random.PRNGKey(s["seed"])
    eval_key = jax.random.fold_in(jax.random.PRNGKey(s["seed"]), 10**9)  # same masks every eval
    eval_size = dict(batch_size=int(t.eval_batch_size), max_batches=int(t.eval_batches))
    tpb_val = batches.eval_tokens_per_byte(**eval_size)
    tokens_per_step = bs * sl
    rows = layout.process_rows(bs)  # this process's block of rows of every global batch
    slot, slots = rows or (0, 1)

    def do_eval(step):
        r = evaluate(eval_fn, state["ema"], batches.eval_batches(**eval_size), tpb_val, key=eval_key,
                     exact=objective.exact, layout=layout)
        rec = {"kind": "eval", "step": step, **r, "tokens": step * tokens_per_step,
               "flops": step * tokens_per_step * fpt, "weights": "ema"}
        log.write(rec)
        return rec

    last_eval = None
    if start == 0 and not any(r.get("kind") == "meta" for r in read_metrics(log.path)):
        log.write({"kind": "meta", "step": 0, "objective": objective.name,
                   "params_non_embedding": s["model"].n_params(), "train_flops_per_token": fpt,
                   "total_steps": steps, "tokens_per_step": tokens_per_step,
                   "tokens_per_byte_val": tpb_val, "val_sequences_per_eval": int(t.eval_batches) * int(
                       t.eval_batch_size), "true_bpb": s["data"].manifest.get("true_bpb"),
                   "unique_tokens": getattr(batches, "unique_tokens", None),
                   **({"conditional": batches.describe()} if batches.conditional else {})})
    bar = tqdm(total=steps, initial=start, disable=not (t.progress and main), dynamic_ncols=True,
               desc=f"{objective.name}", mininterval=1.0)
    acc, n_acc = 0.0, 0
    t_last, step_last = None, start
    stopped = None
    with _Stop() as stop:
        for step in range(start + 1, steps + 1):
            local = batches.train_batch(seed=s["seed"], step=step, batch_size=bs, process_index=slot,
                                        process_count=slots)
            t0 = time.perf_counter()
            batch = jax.tree.map(lambda a: layout.batch(a, (bs, sl)) if rows else layout.full_batch(a), local)
            state, m = train_step(state, batch, layout.replicate(jax.random.fold_in(base_key, step)))
            if t_last is None:  # first step of this process: includes compilation
                jax.block_until_ready(m["loss"])
                compile_s = time.perf_counter() - t0
                log.write({"kind": "compile", "step": step, "first_step_s": compile_s})
                t_last, step_last = time.perf_counter(), step
            acc, n_acc = acc + m["loss"], n_acc + 1
            if step % t.log_every == 0 or step == steps:
                loss = float(acc) / n_acc
                if not math.isfinite(loss):
                    raise FloatingPointError(f"train loss became {loss} at step {step}; lower optim.lr")
                now = time.perf_counter()
                tps = ((step - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                       if step > step_last else None)
                t_last, step_last = now, step
                log.write({"kind": "train", "step": step, "train_loss": loss, "tokens_per_s": tps,
                           "lr": float(s["sched"](step - 1)), "grad_norm": float(m["grad_norm"]),
                           "tokens": step * tokens_per_step, "flops": step * tokens_per_step * fpt,
                           # the backbone's unweighted auxiliary loss (MoE load balancing) at this
                           # step; train_loss already includes its weighted share
                           **({"aux_loss": float(m["aux_loss"])} if "aux_loss" in m else {})})
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}" if tps else "-", refresh=False)
                acc, n_acc = 0.0, 0
            bar.update(1)
            if step % t.eval_every == 0 or step == steps:
                last_eval = do_eval(step)
                if main:
                    bar.write(f"step {step}: val_bpb {last_eval['val_bpb']:.4f}"
                              + (f" ± {last_eval['val_bpb_stderr']:.4f} (upper bound)"
                                 if "val_bpb_stderr" in last_eval else ""))
                t_last = time.perf_counter()  # eval time is not training time
            stopping = stop.stopped()
            if step % t.ckpt_every == 0 or step == steps or stopping:
                ckpt.save(step, state)  # every process writes its shards
                t_last = time.perf_counter()
            if stopping:
                stopped = (stop.signum, step)
                break
    bar.close()
    ckpt.close()
    if stopped:
        signum, step = stopped
        print(f"stopped by signal {signum} at step {step}; checkpoint saved, run the same command to resume",
              file=sys.stderr)
        stop.chain()  # the handler that was there before (submitit's requeues the job and exits)
        sys.exit(128 + signum)
    if last_eval is None:
        last_eval = next((r for r in reversed(read_metrics(log.path)) if r.get("kind") == "eval"), {})
    return last_eval


def task(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    return run(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))


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


def main() -> None:
    try:
        check_launcher(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_entry(task, config_name="config")


if __name__ == "__main__":
    main()
