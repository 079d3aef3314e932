"""Train any backbone under any objective: ``python -m sandbox.train [overrides]``.

One loop for every objective. The run is built by the one recipe
(``sandbox.core.build``), stepped by the compiled step of ``sandbox.core.step`` and
written by ``sandbox.core.runfiles``; this module only orders those pieces.

- Batches and step keys are pure functions of ``(seed, step)``, so a run resumed from a
  checkpoint continues exactly as if never stopped (``sandbox.core.runs.check_same_run``
  refuses a resumed run whose trajectory-changing settings differ).
- Evaluation uses the EMA weights and reports held-out bits per byte (an upper bound,
  with its Monte-Carlo standard error, for diffusion).
- Devices: ``mesh=single|dp|fsdp`` places the state by the parameters' logical axes and
  splits every global batch over the devices; each process gathers only its own rows.
  Several processes share one run folder: process 0 writes metrics and run files, every
  process takes part in checkpoints, and a stop signal seen by any process stops all of
  them at the same step (``sandbox.core.preempt``).
- ``train.init_from=RUN_DIR`` starts from another run's weights (same tokenizer and shapes,
  checked; the optimizer starts fresh; the source is recorded in the meta line).
- ``metrics.jsonl`` is the record of the run; ``logger=tensorboard|wandb|mlflow`` mirrors
  the same records to a tracking tool.
- Everything that can be wrong with the inputs is checked before the run folder is
  written; a bad input ends with one line and, for a fresh run, leaves no folder behind.
"""

from __future__ import annotations

from sandbox.core import host_memory

# first, before NumPy and JAX start threads: a training process keeps the memory each step frees
# for the next (sandbox.core.host_memory; a no-op where this module is imported later, as in tests)
host_memory.keep_freed_memory()

import math
import shutil
import sys
import time
from pathlib import Path

import jax
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sandbox.core.build import Built, build, build_batches, check_fields
from sandbox.core.checkpoint import Checkpointer, describe_state, restore_run
from sandbox.core.cli import check_launcher, hydra_entry, require_int
from sandbox.core.errors import exit_on_user_error
from sandbox.core.loggers import build_logger
from sandbox.core.mesh import init_distributed, is_main_process
from sandbox.core.preempt import Stop
from sandbox.core.prefetch import Prefetch
from sandbox.core.runfiles import MetricsLog, read_metrics, write_run_files
from sandbox.core.runs import check_same_run, warm_start
from sandbox.core.step import evaluate, make_eval_fn, make_train_step


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Train per ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint); returns the last
    evaluation record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fresh = not any(run_dir.iterdir())
    main = True
    try:
        init_distributed(cfg.get("dist"))  # before anything touches a device
        main = is_main_process()
        b, state = _setup(cfg, run_dir)
        logger = build_logger(cfg.get("logger"), run_dir, OmegaConf.to_container(cfg, resolve=True),
                              enabled=main, resume_step=int(state["step"]))  # a missing extra: one line
    except BaseException:
        if fresh and main:  # nothing half-written: a fresh run folder that failed to start goes away
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if main and (fresh or not (run_dir / "config.yaml").exists()):
        write_run_files(run_dir, OmegaConf.to_yaml(cfg, resolve=True), overrides or [], describe_state(state))
    try:
        out = _loop(cfg, run_dir, b, state, logger)
    except SystemExit:  # a stop signal: checkpointed, resumable
        logger.close("killed")
        raise
    except BaseException:
        logger.close("failed")
        raise
    logger.close("finished")
    return out


def _setup(cfg, run_dir: Path) -> tuple[Built, dict]:
    t = cfg.train
    for f in ("eval_every", "ckpt_every", "log_every", "eval_draws", "eval_batches", "eval_batch_size"):
        require_int(t, f, f"train.{f}", minimum=1)
    b = build(cfg, progress=bool(t.progress))
    b.batches = build_batches(cfg, b.data, b.seq_len)
    fmt = getattr(b.batches, "format", None)
    data_name = str(b.data.manifest.get("corpus")) + (f" format={fmt}" if fmt else "")
    check_fields(b.objective, b.batches, data_name)
    b.warm = warm_start(cfg, b)  # train.init_from: another run's weights (None: the seed's)
    state = b.init_state()
    main = is_main_process()
    if main and b.layout.name != "single":
        print(b.layout.describe(b.params))
    restored, step = restore_run(run_dir, state, check=lambda: check_same_run(cfg, run_dir), owner=True)
    if restored is not None:
        state = restored
        if main:
            print(f"resuming {run_dir} from step {step}")
    return b, state


def _meta(cfg, b: Built, tpb_val: float) -> dict:
    t, o = cfg.train, b.objective
    return {"kind": "meta", "step": 0, "objective": o.name, "objective_label": o.label,
            "bound": "exact" if o.exact else "upper", "params_non_embedding": b.model.n_params(),
            "train_flops_per_token": b.flops_per_token, "total_steps": b.steps,
            "tokens_per_step": b.batch_size * b.seq_len, "tokens_per_byte_val": tpb_val,
            "val_sequences_per_eval": int(t.eval_batches) * int(t.eval_batch_size),
            "true_bpb": b.data.manifest.get("true_bpb"),
            "unique_tokens": getattr(b.batches, "unique_tokens", None),
            **({"init_from": b.warm} if b.warm else {}),
            **({"conditional": b.batches.describe()} if b.batches.conditional else {})}


def _loop(cfg, run_dir: Path, b: Built, state, logger) -> dict:
    t, batches, objective, layout = cfg.train, b.batches, b.objective, b.layout
    steps, bs, sl, fpt = b.steps, b.batch_size, b.seq_len, b.flops_per_token
    seed = int(cfg.seed)
    main = is_main_process()
    start = int(state["step"])
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=main, mirror=logger)
    log.rewind(start)
    ckpt = Checkpointer(run_dir / "checkpoints", owner=True)
    train_step = make_train_step(b.graphdef, objective, b.tx, float(t.ema_decay), layout, state)
    eval_fn = make_eval_fn(b.graphdef, objective, int(t.eval_draws), layout)
    hook = getattr(batches, "make_eval_extra", None)  # a batch source's own metrics (docs/extending.md)
    eval_extra = hook(graphdef=b.graphdef, objective=objective, layout=layout) if hook else None
    base_key = jax.random.PRNGKey(seed)
    eval_key = jax.random.fold_in(jax.random.PRNGKey(seed), 10**9)  # same masks every eval
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
        if eval_extra is not None:
            rec.update(eval_extra(state["ema"], step=step))
        log.write(rec)
        return rec

    last_eval = None
    if start == 0 and not any(r.get("kind") == "meta" for r in read_metrics(log.path)):
        log.write(_meta(cfg, b, tpb_val))
    bar = tqdm(total=steps, initial=start, disable=not (t.progress and main), dynamic_ncols=True,
               desc=objective.label, mininterval=1.0)
    acc, n_acc = {}, 0  # window sums of the loss (and of its terms), read back when logging
    t_last, step_last = None, start
    stopped = None

    def make_batch(step):
        return batches.train_batch(seed=seed, step=step, batch_size=bs, process_index=slot,
                                   process_count=slots)

    # the next batches are built on a thread while the step runs (sandbox/core/prefetch.py)
    depth = require_int(t, "prefetch", "train.prefetch", minimum=0) if "prefetch" in t else 2
    with Stop() as stop, Prefetch(make_batch, range(start + 1, steps + 1), depth) as ahead:
        for step, local in ahead:
            t0 = time.perf_counter()
            batch = jax.tree.map(lambda a: layout.batch(a, (bs, sl)) if rows else layout.full_batch(a), local)
            state, m = train_step(state, batch, layout.replicate(jax.random.fold_in(base_key, step)))
            if t_last is None:  # first step of this process: includes compilation
                jax.block_until_ready(m["loss"])
                log.write({"kind": "compile", "step": step, "first_step_s": time.perf_counter() - t0})
                t_last, step_last = time.perf_counter(), step
            # an objective of several terms (a hybrid, edit_mdlm's locate) also logs each one's window
            # mean as loss_<name>, so the split of train_loss can be read afterwards
            named = [k for k in m if k not in ("loss", "grad_norm", "aux_loss")]
            acc = {k: acc.get(k, 0.0) + m[k] for k in ["loss", *(named if len(named) > 1 else [])]}
            n_acc += 1
            if step % t.log_every == 0 or step == steps:
                loss = float(acc["loss"]) / n_acc
                if not math.isfinite(loss):
                    raise FloatingPointError(f"train loss became {loss} at step {step}; lower optim.lr")
                now = time.perf_counter()
                tps = ((step - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                       if step > step_last else None)
                t_last, step_last = now, step
                log.write({"kind": "train", "step": step, "train_loss": loss, "tokens_per_s": tps,
                           "lr": float(b.sched(step - 1)), "grad_norm": float(m["grad_norm"]),
                           "tokens": step * tokens_per_step, "flops": step * tokens_per_step * fpt,
                           # the backbone's unweighted auxiliary loss (MoE load balancing) at this
                           # step; train_loss already includes its weighted share
                           **({"aux_loss": float(m["aux_loss"])} if "aux_loss" in m else {}),
                           **{f"loss_{k}": float(v) / n_acc for k, v in acc.items() if k != "loss"}})
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}" if tps else "-", refresh=False)
                acc, n_acc = {}, 0
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


@exit_on_user_error
def main() -> None:
    check_launcher(sys.argv[1:])
    hydra_entry(task, config_name="config")


if __name__ == "__main__":
    main()
