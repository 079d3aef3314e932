"""The ``train`` subcommand: ``python -m sandbox.bench train [flags]``.

Runs a matrix of models x objectives (x attention kernels x meshes) at one batch shape
and prints one row per point (tokens/s, step time, MFU against a matmul peak measured in
the same run; ``sandbox.bench.train_step``), then, unless ``--no-nnx``, the same step
written with ``nnx.jit`` against the trainer's ``jax.jit`` step
(``sandbox.bench.nnx_variants``). With several ``--mesh`` layouts the points are also
timed round-robin against ``mesh=single``; ``--checkpoint`` times checkpoint save /
restore of the train state instead of steps (``sandbox.bench.checkpoint``).

Every flag and every point's config is checked (an abstract build by the recipe: no
arrays) before anything is measured or written, so a bad one is one line, exit 2, and
no results folder. Without ``--mesh`` the step is timed on the config's mesh (``single``).
``--profile`` adds a per-operation profile of each point's step (``sandbox.bench.profile``).
``--cpu-devices 8`` fakes 8 CPU devices (``sandbox.core.mesh.fake_cpu_devices``; they
share the machine's cores, so on a CPU this measures the overhead of sharding, not a
speed-up).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sandbox.bench.checkpoint import bench_checkpoint
from sandbox.bench.nnx_variants import NNX_VARIANTS, bench_nnx_vs_jit
from sandbox.bench.peak import measure_matmul_peak
from sandbox.bench.results import Results, csv_list, format_table, loadavg, log
from sandbox.bench.train_step import bench_mesh_pairs, bench_train, build_point, check_shape, compute_dtype
from sandbox.core.cli import CONF_DIR
from sandbox.core.errors import UserError
from sandbox.core.mesh import backend, describe_devices, device_info, fake_cpu_devices

TRAIN_COLUMNS = [("model", "model", "{}"), ("objective", "objective", "{}"), ("attention", "attention", "{}"),
                 ("matmul", "matmul", "{}"),
                 ("batch", "batch", "{}"), ("seq", "seq", "{}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
                 ("step ms", "step_ms", "{:,.1f}"), ("compile s", "compile_s", "{:.1f}"),
                 ("GFLOP/s", "gflops", "{:,.1f}"), ("MFU %", "mfu", "{:.1%}"),
                 ("MFU best %", "mfu_best", "{:.1%}"),
                 ("peak GFLOP/s", "peak_gflops", "{:,.1f}")]
NNX_COLUMNS = [("variant", "variant", "{}"), ("how", "how", "{}"), ("step ms", "step_ms", "{:,.1f}"),
               ("dispatch ms", "dispatch_ms", "{:.2f}"), ("first call s", "first_call_s", "{:.1f}"),
               ("vs jit", "ratio", "{:.3f}"), ("min vs min", "ratio_min", "{:.3f}"),
               ("loss", "loss", "{:.5f}")]
PAIR_COLUMNS = [("model", "model", "{}"), ("objective", "objective", "{}"), ("mesh", "mesh", "{}"),
                ("shape", "mesh_shape", "{}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
                ("step ms", "step_ms", "{:,.1f}"), ("vs single", "ratio", "{:.3f}"),
                ("loss", "loss", "{:.5f}")]
CKPT_COLUMNS = [("model", "model", "{}"), ("mesh", "mesh", "{}"), ("devices", "devices", "{}"),
                ("state MB", "state_mb", "{:,.1f}"), ("disk MB", "disk_mb", "{:,.1f}"),
                ("save s", "save_s", "{:.3f}"), ("restore s", "restore_s", "{:.3f}")]


def add_arguments(p) -> None:
    p.add_argument("--models", default="tiny,small", help="comma-separated conf/model/ names (tiny,small)")
    p.add_argument("--objectives", default="ar,mdlm", help="comma-separated conf/objective/ names (ar,mdlm)")
    p.add_argument("--attention", default=None,
                   help="comma-separated attention kernels to sweep, e.g. xla,chunked "
                        "(auto|xla|chunked|cudnn|fused; default: each model config's own)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (32)")
    p.add_argument("--seq", type=int, default=256, help="sequence length (256)")
    p.add_argument("--steps", type=int, default=10, help="at most this many timed steps per point (10)")
    p.add_argument("--max-seconds", type=float, default=12.0,
                   help="stop timing a point once its timed steps pass this many seconds, after at "
                        "least 3 steps (12; 0 = always --steps)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling (1)")
    p.add_argument("--nnx-model", default="tiny", help="model of the NNX-vs-jit comparison (tiny)")
    p.add_argument("--nnx-steps", type=int, default=5, help="timed rounds of the NNX-vs-jit comparison (5)")
    p.add_argument("--no-nnx", action="store_true", help="skip the NNX-vs-jit comparison")
    p.add_argument("--peak-n", type=int, default=None,
                   help="matmul size of the peak measurement (2048 on CPU, 8192 on accelerators)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for every point, e.g. -o model.n_layers=2 (repeatable)")
    p.add_argument("--out", default="runs/bench", help="results go to <out>/train-<timestamp>/ (runs/bench)")
    p.add_argument("--quick", action="store_true",
                   help="a fast check: tiny only, batch 8, seq 64, 3 timed steps, small peak matmul")
    p.add_argument("--mesh", default=None,
                   help="comma-separated conf/mesh/ layouts to time the trainer's step on, e.g. "
                        "single,dp,fsdp (default: the config's mesh, single)")
    p.add_argument("--mesh-rounds", type=int, default=5,
                   help="with several --mesh: also time them round-robin for this many rounds (5; 0: no)")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="fake this many CPU devices (they share the cores; before any device is used)")
    p.add_argument("--profile", action="store_true",
                   help="also profile each point's step: per-operation table (phase x kind) and a "
                        "Perfetto/TensorBoard trace in the results folder")
    p.add_argument("--checkpoint", action="store_true",
                   help="time checkpoint save and restore of each model's train state instead of steps")
    p.add_argument("--ckpt-repeats", type=int, default=3, help="save/restore pairs per model (3)")


# --- checks ----------------------------------------------------------------------------------------
def _meshes(text: str | None) -> list[str | None]:
    """``--mesh`` as a list (``[None]``: the config's own mesh), each a conf/mesh/ file."""
    meshes = csv_list(text) or [None]
    choices = sorted(p.stem for p in (Path(CONF_DIR) / "mesh").glob("*.yaml"))
    for m in meshes:
        if m is not None and m not in choices:
            raise UserError(f"--mesh: unknown layout '{m}' (choose from {', '.join(choices)})")
    return meshes


def _check_attention(attns: list[str | None]) -> None:
    from sandbox.models.attention import IMPLS

    for a in attns:
        if a is not None and a not in IMPLS:
            raise UserError(f"--attention: unknown kernel '{a}' (choose from {', '.join(IMPLS)})")
        if a == "cudnn" and backend() != "gpu":
            raise UserError(f"--attention cudnn needs a GPU (this backend is {backend()}); "
                            "use xla or chunked")


def _apply_quick(args) -> None:
    if args.quick:
        args.models, args.batch, args.seq, args.steps, args.max_seconds = "tiny", 8, 64, 3, 0
        args.nnx_steps, args.peak_n = 3, args.peak_n or 1024


# --- the subcommand --------------------------------------------------------------------------------
def run(args) -> dict:
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise UserError(f"--cpu-devices {args.cpu_devices} must be at least 1")
        fake_cpu_devices(args.cpu_devices)  # before any device is touched
    meshes = _meshes(args.mesh)
    if args.checkpoint:
        return _run_checkpoint(args, meshes)
    _apply_quick(args)
    models, objectives = csv_list(args.models), csv_list(args.objectives)
    attns = csv_list(args.attention) or [None]
    if not models:
        raise UserError("--models is empty; give e.g. --models tiny,small")
    if not objectives:
        raise UserError("--objectives is empty; give e.g. --objectives ar,mdlm")
    _check_attention(attns)
    check_shape(args.batch, args.seq, args.steps)
    if args.nnx_steps < 1 or args.warmup < 0:
        raise UserError("--nnx-steps must be at least 1 and --warmup at least 0")
    peak_n = args.peak_n or (2048 if backend() == "cpu" else 8192)
    if peak_n < 1:
        raise UserError(f"--peak-n {peak_n} must be positive")
    points = [(m, o, a, me) for m in models for o in objectives for a in attns for me in meshes]
    dtypes = {}
    for m, o, a, me in points + ([] if args.no_nnx else [(args.nnx_model, "ar", None, "single")]):
        b = build_point(m, o, batch_size=args.batch, seq_len=args.seq, attention=a, mesh=me,
                        overrides=args.override, abstract=True)  # every point checked before any work
        dtypes[(m, o, a, me)] = compute_dtype(b.model)
    max_s = args.max_seconds if args.max_seconds and args.max_seconds > 0 else None

    dev = device_info()
    res = Results(args.out, "train", meta={"argv": sys.argv[1:], "models": models, "objectives": objectives,
                                           "attention": attns, "batch": args.batch, "seq": args.seq,
                                           "steps": args.steps, "max_seconds": max_s,
                                           "overrides": args.override, "cpu_count": dev["cpu_count"],
                                           "mesh": meshes, "devices": dev["devices"]})
    log(f"device: {describe_devices()}, load {loadavg()}")
    peaks = {}  # a reference measured up front; each row divides by its own interleaved peak
    train_rows = []
    for m, o, a, me in points:
        dtype = dtypes[(m, o, a, me)]
        if dtype not in peaks:
            log(f"matmul peak (reference): {peak_n}x{peak_n} {dtype} ...")
            load0 = loadavg()
            peaks[dtype] = measure_matmul_peak(peak_n, dtype)
            res.add({"kind": "peak", "n": peak_n, "dtype": dtype, "gflops": peaks[dtype],
                     "load_before": load0, "load_after": loadavg(), "backend": dev["backend"],
                     "device": dev["device"]})
            log(f"  {peaks[dtype]:,.1f} GFLOP/s")
        log(f"train {m}/{o}" + (f" attention={a}" if a else "") + (f" mesh={me}" if me else "")
            + f" batch {args.batch} seq {args.seq} ...")
        row = bench_train(m, o, args.batch, args.seq, args.steps, a, overrides=args.override,
                          warmup=args.warmup, max_seconds=max_s, peak_n=peak_n, mesh=me,
                          profile_dir=res.ensure_dir() if args.profile else None)
        train_rows.append(res.add(row))
        if row.get("profile"):
            log(f"  profile: {row['profile']} (trace: {row['profile_trace']})")
        log(f"  {row['step_ms']:,.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%} "
            f"of {row['peak_gflops']:,.1f} GFLOP/s (compile {row['compile_s']:.1f} s, "
            f"{row['timed_steps']} timed steps, load {row['load_after']})")
    nnx_rows = []
    if not args.no_nnx:
        log(f"NNX vs jax.jit: {args.nnx_model}/ar batch {args.batch} seq {args.seq}, "
            f"{len(NNX_VARIANTS)} variants round-robin ...")
        nnx_rows = [res.add(r) for r in bench_nnx_vs_jit(args.nnx_model, "ar", args.batch, args.seq,
                                                         args.nnx_steps, overrides=args.override)]
    print(f"\nTraining speed ({dev['backend']}: {dev['device']}, {dev['cpu_count']} cpus; MFU against "
          f"the best n={peak_n} matmul timed between the steps of each row; up-front reference "
          + ", ".join(f"{v:,.1f} GFLOP/s {k}" for k, v in peaks.items()) + ")")
    columns = (TRAIN_COLUMNS if meshes == [None]
               else TRAIN_COLUMNS[:3] + [("mesh", "mesh", "{}")] + TRAIN_COLUMNS[3:])
    print(format_table(train_rows, columns))
    if meshes != [None]:
        _print_mesh_ratios(train_rows)
    pair_rows = _mesh_pairs(args, models, objectives, meshes, res)
    if nnx_rows:
        _print_nnx(nnx_rows)
    print(f"\nload average (1 min): {loadavg()}; results: {res.path}")
    return {"dir": str(res.dir), "train": train_rows, "nnx": nnx_rows, "mesh_pairs": pair_rows}


def _mesh_pairs(args, models, objectives, meshes, res) -> list[dict]:
    """With several named meshes: each (model, objective) timed round-robin over them."""
    named = [x for x in meshes if x]
    if len(named) < 2 or args.mesh_rounds <= 0:
        return []
    pair_rows = []
    for m, o in [(m, o) for m in models for o in objectives]:
        log(f"meshes round-robin: {m}/{o} {','.join(named)}, {args.mesh_rounds} rounds ...")
        rows = bench_mesh_pairs(m, o, named, args.batch, args.seq, args.mesh_rounds, overrides=args.override)
        pair_rows += [res.add(r) for r in rows]
    print(f"\nSame step on each mesh, round-robin ({args.mesh_rounds} rounds; vs single = median paired "
          "ratio of tokens/s)")
    print(format_table(pair_rows, PAIR_COLUMNS))
    return pair_rows


def _print_mesh_ratios(rows: list[dict]) -> None:
    """tokens/s of each mesh relative to mesh=single at the same point."""
    point = lambda r: (r["model"], r["objective"], r["attention"])  # noqa: E731
    base = {point(r): r["tokens_per_s"] for r in rows if r["mesh"] == "single"}
    lines = [f"  {r['model']}/{r['objective']} mesh={r['mesh']} {r['mesh_shape']}: "
             f"{r['tokens_per_s'] / base[point(r)]:.2f}x mesh=single"
             for r in rows if r["mesh"] != "single" and point(r) in base]
    if lines:
        print(f"\ntokens/s relative to mesh=single ({rows[0]['devices']} {backend()} devices):")
        print("\n".join(lines))


def _print_nnx(nnx_rows: list[dict]) -> None:
    r0 = nnx_rows[0]
    print(f"\nSame train step, NNX vs jax.jit ({r0['model']}/{r0['objective']}, batch {r0['batch']}, "
          f"seq {r0['seq']}; {r0['timed_steps']} round-robin rounds; vs jit = median paired ratio)")
    print(format_table(nnx_rows, NNX_COLUMNS, left=2))
    nnx = next(r for r in nnx_rows if r["variant"] == "nnx_jit")
    extra = nnx["dispatch_ms"] - r0["dispatch_ms"]
    print(f"nnx.jit / jax.jit step time: {nnx['ratio']:.3f} "
          f"({'within' if nnx['ratio'] <= 1.10 else 'NOT within'} 10%); nnx.jit host overhead "
          f"{extra:+.1f} ms per call = {extra / r0['step_ms']:+.2%} of a step")


def _run_checkpoint(args, meshes) -> dict:
    models = csv_list(args.models)
    if not models:
        raise UserError("--models is empty; give e.g. --models tiny,small")
    if args.ckpt_repeats < 1:
        raise UserError(f"--ckpt-repeats {args.ckpt_repeats} must be at least 1")
    for m in models:
        for me in meshes:
            build_point(m, "ar", mesh=me, overrides=args.override, abstract=True)
    dev = device_info()
    res = Results(args.out, "checkpoint", meta={"argv": sys.argv[1:], "models": models, "mesh": meshes,
                                                "repeats": args.ckpt_repeats, "devices": dev["devices"]})
    rows = []
    for m in models:
        for me in meshes:
            log(f"checkpoint {m}" + (f" mesh={me}" if me else "") + f": {args.ckpt_repeats} save/restore "
                "pairs ...")
            row = bench_checkpoint(m, "ar", args.ckpt_repeats, overrides=args.override, mesh=me,
                                   root=args.out)
            row.update(state_mb=row["state_bytes"] / 2**20, disk_mb=row["disk_bytes"] / 2**20)
            rows.append(res.add(row))
            log(f"  save {row['save_s']:.3f} s, restore {row['restore_s']:.3f} s ({row['state_mb']:,.1f} MB)")
    print(f"\nCheckpoint save / restore of the whole train state ({dev['backend']}, median of "
          f"{args.ckpt_repeats}):")
    print(format_table(rows, CKPT_COLUMNS))
    print(f"\nresults: {res.path}")
    return {"dir": str(res.dir), "checkpoint": rows}
