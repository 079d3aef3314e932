"""The ``gen`` subcommand: ``python -m sandbox.bench gen [flags]``, generation speed per sampler.

Times every sampler over its sweep axes (output length, batch, diffusion steps, threshold
tau, semi-AR block size; ``sandbox.bench.gen_plan``), each point against a bare forward
of the same shape (``sandbox.bench.gen_time``), prints one row per point, then a summary
of the three figures the sandbox is built to show (``analysis.gen_summary``, shared with
the report): (a) a diffusion sampler's time per model call against one bare forward,
(b) how AR time per token grows with output length with and without the KV cache, (c)
where ``mdm_threshold`` stands against AR at each batch.

- ``ar_nocache`` generates only the last ``--nocache-tokens`` tokens of each length after
  a random prompt: each of its steps is one forward of the whole static buffer whatever
  the position, so its time per generated token is that of a full generation, without
  the quadratic bill (512 forwards of 513 tokens at batch 1 is half a minute on a 2-core
  CPU). ``prompt_len`` in the row says so.
- **Random or trained weights**: a family without ``--ar-run`` / ``--mdm-run`` /
  ``--bd3lm-run`` gets a randomly initialised ``--model``. Speed does not depend on the
  weights, except the NFE of ``mdm_threshold`` (and ancestral's skipped calls): with
  random weights no token reaches tau, so it reveals one token per call.
- ``--max-call-s`` skips a point whose predicted call (NFE bound x measured forward)
  exceeds it, with a printed and recorded reason.
- ``--quality`` scores the samples after all timing (``sandbox.bench.gen_quality``).

Output: ``<out>/gen-<timestamp>/results.jsonl`` (``meta``, one ``gen`` row per point as
measured, ``skipped``, ``reference`` and ``gen_quality`` rows), ``env.json``, ``git.json``
and, once everything finished, ``summary.json`` (figures a, b, c; its absence marks an
interrupted run). Every flag, subject and sampler setting is checked before anything is
measured or written: a bad one is one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp

from analysis.gen_summary import format_summary, quality_figure, summarize
from sandbox.bench.gen_plan import (
    DEFAULTS,
    FAMILY_OF,
    PRESETS,
    SAMPLERS,
    describe_settings,
    load_subject,
    plan,
)
from sandbox.bench.gen_quality import collect, quality_pass, reference_rows
from sandbox.bench.gen_time import FWD_LOOP, LOOP_TARGET_S, Forwards, predict_nfe, time_point
from sandbox.bench.peak import measure_bandwidth, measure_draw, measure_matmul_peak
from sandbox.bench.results import Results, csv_list, float_list, format_table, int_list, loadavg, log
from sandbox.core.errors import UserError
from sandbox.core.mesh import describe_devices, device_info

COLUMNS = [("sampler", "label", "{}"), ("settings", "settings_text", "{}"), ("sweeps", "sweeps_text", "{}"),
           ("B", "batch", "{}"), ("L", "length", "{}"), ("P", "prompt_len", "{}"), ("NFE", "nfe", "{:.1f}"),
           ("tok/fwd", "tokens_per_forward", "{:.2f}"), ("call s", "latency_s", "{:.4f}"),
           ("ms/seq", "ms_per_seq", "{:,.2f}"), ("ms/token", "ms_per_token", "{:.3f}"),
           ("tokens/s", "tokens_per_s", "{:,.0f}"), ("fwd ms", "fwd_ms", "{:,.2f}"),
           ("step/fwd", "step_over_forward", "{:.3f}"), ("step/loop", "step_over_forward_loop", "{:.3f}"),
           ("compile s", "compile_s", "{:.1f}"),
           ("calls", "timed_calls", "{}"), ("quality", "quality_text", "{}")]


def table(rows: list[dict], refs: dict) -> str:
    shown = []
    for r in rows:
        ref = refs.get((r["family"], r["length"], r["prompt_len"]))
        shown.append({**r, "sweeps_text": ",".join(r["sweeps"]), "ms_per_seq": 1e3 * r["latency_per_seq_s"],
                      "ms_per_token": 1e3 * r["latency_per_token_s"], "fwd_ms": 1e3 * r["forward_s"],
                      "quality_text": quality_figure(r.get("quality"), ref)})
    return format_table(shown, COLUMNS)


def add_arguments(p) -> None:
    d = "(default %(default)s)"
    p.add_argument("--ar-run", default=None, help="trained objective=ar run folder (default: random)")
    p.add_argument("--mdm-run", default=None, help="trained objective=mdlm run folder (default: random)")
    p.add_argument("--bd3lm-run", default=None, help="trained objective=bd3lm run folder (default: random)")
    p.add_argument("--model", default="tiny", help="conf/model/ name of the random models " + d)
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for the random models, e.g. -o model.n_layers=2 (repeatable)")
    p.add_argument("--samplers", default=None, help=f"comma-separated subset of {','.join(SAMPLERS)} (all)")
    p.add_argument("--lengths", default=None, help="output lengths of the length sweep (64,128,256,512)")
    p.add_argument("--length", type=int, default=None,
                   help="output length of the batch, steps, tau and block sweeps (128)")
    p.add_argument("--batches", default=None, help="batch sizes of the batch and tau sweeps (1,32)")
    p.add_argument("--taus", default=None, help="mdm_threshold taus (0.7,0.8,0.9,0.95)")
    p.add_argument("--tau", type=float, default=None, help="tau of the threshold length/block sweeps (0.9)")
    p.add_argument("--steps-div", default=None,
                   help="steps sweep as divisors of the generated length: 16,8,4,2,1 = L/16 .. L")
    p.add_argument("--steps-batches", default=None,
                   help="batches the steps sweep runs at: comma list or 'all' (= --batches) (1)")
    p.add_argument("--length-div", type=int, default=None,
                   help="ancestral steps in the length and batch sweeps = generated / this (8)")
    p.add_argument("--blocks", default=None, help="semi-AR block sizes of the block sweep (16,32,64; '')")
    p.add_argument("--block-steps-div", default=None,
                   help="ancestral steps of the block sweep as divisors of the generated length (4: L/4)")
    p.add_argument("--caches", default=None,
                   help="block caches timed beside none in the block sweep (prefix,dual; also causal; '')")
    p.add_argument("--bd3lm-blocks", default=None,
                   help="bd3lm block sizes (4,16,64); ancestral inside, block/--length-div steps per block")
    p.add_argument("--prompt-len", type=int, default=None, help="random prompt tokens before the output (0)")
    p.add_argument("--no-prompt-cache", action="store_true",
                   help="prompt_attention=self subjects: full forwards instead of the prompt cache")
    p.add_argument("--nocache-tokens", type=int, default=None,
                   help="ar_nocache generates the last N tokens of each length (64; 0 = all)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after compiling (1)")
    p.add_argument("--repeats", type=int, default=None, help="at most this many timed calls per point (5)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing a point once its timed calls pass this many seconds (2; >= 1 call)")
    p.add_argument("--fwd-repeats", type=int, default=None,
                   help="bare-forward calls timed after each timed sampler call (3)")
    p.add_argument("--max-call-s", type=float, default=None,
                   help="skip points whose predicted call exceeds this many seconds (20; 0 = never)")
    p.add_argument("--quality", action="store_true", help="score the samples (sandbox.eval.metrics)")
    p.add_argument("--judge", default=None, help="AR judge run for gen-perplexity (implies --quality)")
    p.add_argument("--text-judge", default=None, metavar="WEIGHTS",
                   help="pretrained judge (smollm2_135m or gguf:PATH; make judge installs it) for judge bits "
                        "per byte (implies --quality)")
    p.add_argument("--quality-samples", type=int, default=None,
                   help="samples per distribution for --quality (32)")
    p.add_argument("--quality-seconds", type=float, default=None,
                   help="at most this long topping up one distribution's samples (30)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, prompts and keys (0)")
    p.add_argument("--out", default="runs/bench", help="results go to <out>/gen-<timestamp>/ (runs/bench)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a fast check (< 1 min on a 2-core CPU)")
    g.add_argument("--demo", action="store_true",
                   help="the `make demo` preset: length 128, batch 1 and 32, AR, threshold x2 taus, "
                        "ancestral x2 step counts")


def resolve(args) -> argparse.Namespace:
    """Flags -> validated options (presets fill what was not given). UserError on bad values."""
    vals = dict(DEFAULTS)
    if args.quick:
        vals.update(PRESETS["quick"])
    if args.demo:
        vals.update(PRESETS["demo"])
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            vals[k] = v
    o = argparse.Namespace(**vals)
    o.samplers = csv_list(o.samplers)
    bad = [s for s in o.samplers if s not in SAMPLERS]
    if bad or not o.samplers:
        raise UserError(f"--samplers: unknown '{','.join(bad) or '(empty)'}' "
                        f"(choose from {','.join(SAMPLERS)})")
    o.lengths = int_list(o.lengths, "--lengths", 2)
    o.batches = int_list(o.batches, "--batches", 1)
    o.steps_div = int_list(o.steps_div, "--steps-div", 1)
    o.block_steps_div = int_list(o.block_steps_div, "--block-steps-div", 1)
    o.blocks = int_list(o.blocks, "--blocks", 1)
    o.bd3lm_blocks = int_list(o.bd3lm_blocks, "--bd3lm-blocks", 1)
    o.taus = float_list(o.taus, "--taus")
    o.caches = csv_list(o.caches)
    bad = [c for c in o.caches if c not in ("none", "prefix", "dual", "causal")]
    if bad:
        raise UserError(f"--caches: unknown '{','.join(bad)}' (choose from prefix,dual,causal)")
    if not o.lengths or not o.batches:
        raise UserError("--lengths and --batches must each name at least one value")
    for t in [*o.taus, o.tau]:
        if not 0 < t <= 1:
            raise UserError(f"--taus/--tau: {t} must be in (0, 1]")
    if o.steps_batches != "all":
        int_list(o.steps_batches, "--steps-batches", 1)
    for name, minimum in (("length", 2), ("length_div", 1), ("warmup", 0), ("repeats", 1), ("fwd_repeats", 1),
                          ("prompt_len", 0), ("nocache_tokens", 0), ("quality_samples", 1)):
        if int(getattr(o, name)) < minimum:
            raise UserError(f"--{name.replace('_', '-')} {getattr(o, name)} must be at least {minimum}")
    for name in ("max_seconds", "max_call_s", "quality_seconds"):
        if float(getattr(o, name)) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    for L in [*o.lengths, o.length]:
        if o.prompt_len >= L:
            raise UserError(f"--prompt-len {o.prompt_len} is not shorter than the output length {L}")
    o.judge = args.judge
    o.text_judge = getattr(args, "text_judge", None)
    o.quality = bool(args.quality or args.judge or o.text_judge)
    o.seed = args.seed
    o.prompt_cache = not getattr(args, "no_prompt_cache", False)
    return o


def _subjects(args, o) -> dict:
    """One subject per sampler family in use, each checked against the lengths it must read."""
    fams = sorted({FAMILY_OF[s] for s in o.samplers})
    runs = {"ar": args.ar_run, "mdm": args.mdm_run, "bd3lm": args.bd3lm_run}
    subjects = {f: load_subject(f, runs[f], args.model, args.override, args.seed) for f in fams}
    for f, s in subjects.items():  # the sampler's own lengths (AR reads BOS + buffer), not train.seq_len
        need = max(s.forward_len(L) for L in [*o.lengths, o.length])
        if need > s.model.max_len:
            raise UserError(f"--lengths/--length: a {f} step reads {need} tokens, beyond model.max_len="
                            f"{s.model.max_len} of {s.source}; lower the lengths")
    return subjects


def _judge(o, subjects):
    if not o.judge:
        return None
    from sandbox.eval.metrics import load_judge

    judge = load_judge(o.judge)
    for f, s in subjects.items():
        if judge.vocab_size != s.tokenizer.vocab_size:
            raise UserError(f"--judge {o.judge}: vocabulary {judge.vocab_size} is not the {f} model's "
                            f"({s.tokenizer.vocab_size}); the judge must use the samples' tokenizer")
    return judge


def _text_judge(o):
    if not o.text_judge:
        return None
    import os

    from sandbox.eval.judge import TextJudge

    return TextJudge(o.text_judge, cache_dir=os.environ.get("SANDBOX_CACHE", ".cache/sandbox"))


def run(args) -> dict:
    o = resolve(args)
    subjects = _subjects(args, o)
    judge = _judge(o, subjects)
    text_judge = _text_judge(o)  # loaded (and its file checked) before anything is measured
    blocks_dropped = [b for b in o.blocks if b >= o.length - o.prompt_len]
    points = plan(o, subjects)  # every sampler setting checked before anything is measured
    random_fams = [f for f, s in subjects.items() if s.source == "random"]
    dev = device_info()
    meta = {"bench": "gen", "argv": sys.argv[1:], "options": dict(vars(o)),
            "subjects": {f: s.describe() for f, s in subjects.items()}, "random_weights": random_fams,
            "points": len(points), "cpu_count": dev["cpu_count"], "backend": dev["backend"],
            "device": dev["device"]}
    res = Results(args.out, "gen", meta=meta)
    log(f"device: {describe_devices()}, load {loadavg()}; {len(points)} points")
    for f, s in subjects.items():
        log(f"  {f}: {s.source} ({s.model_name}, {s.model.n_params(True):,} non-embedding params"
            + (f", step {s.step})" if s.step is not None else ")"))
    if blocks_dropped:
        log(f"  block sizes {blocks_dropped} are not below the generated length "
            f"{o.length - o.prompt_len}: dropped")
    res.add(probe(subjects))
    groups: dict = {}  # --quality: samples pooled per distribution while timing
    rows, skipped, by_point = _time_points(points, subjects, o, res, groups)
    refs = {}
    if o.quality:
        log(f"quality of {len(groups)} sample sets ({o.quality_samples} samples each"
            + (f", judge {o.judge}" if o.judge else ", no in-sandbox judge")
            + (f", text judge {o.text_judge})" if o.text_judge else
               ", no text judge: judge bits per byte needs --text-judge smollm2_135m)"))
        quality_pass(groups, subjects, o, judge, res, by_point, text_judge)
        shapes = {(g["family"], g["length"], g["prompt_len"]) for g in groups.values()}
        refs = reference_rows(subjects, shapes, o, judge, res, text_judge)
    summary = summarize(rows, refs)
    masks = "/".join(sorted({s.mask_kind for s in subjects.values()}))
    print(f"\nGeneration speed ({dev['backend']}: {dev['device']}, {dev['cpu_count']} cpus; median of "
          f"timed calls after {o.warmup} warm-up; fwd = bare {masks} forward of the same shape timed between "
          f"the calls; step/fwd = (call / NFE) / fwd; step/loop: the same over a forward inside a compiled "
          f"loop of >= {FWD_LOOP} forwards lasting >= {1e3 * LOOP_TARGET_S:.0f} ms)")
    for f, s in subjects.items():
        print(f"  {f}: {s.source} {s.model_name}" + (f" step {s.step}" if s.step is not None else ""))
    print(table(rows, refs))
    print(format_summary(summary, rows, skipped, refs, random_fams))
    if res.created:
        res.write_json("summary.json", {**summary, "random_weights": random_fams, "skipped": len(skipped),
                                        "points": len(rows), "load_after": loadavg()})
    print(f"\nload average (1 min): {loadavg()}; results: {res.path}")
    return {"dir": str(res.dir), "rows": rows, "skipped": skipped, "summary": summary}


def probe(subjects: dict) -> dict:
    """The ``probe`` row: this device's matmul peak; per subject, the bandwidth of streaming a
    matrix the size of its weights (measured once per distinct size, so subjects of one size
    share one figure); and the seconds per logit value of the samplers' exact draw. The measured
    figures of ``conf/hardware/cpu.yaml``."""
    peak = measure_matmul_peak()
    sizes = {f: int(s.model.n_params(non_embedding=False)) * int(jnp.dtype(s.model.dtype).itemsize)
             for f, s in subjects.items()}
    by_size = {n: measure_bandwidth(n) for n in sorted(set(sizes.values()))}
    bw = {f: by_size[n] for f, n in sizes.items()}
    vocab = max(int(s.model.vocab_size) for s in subjects.values())
    draw = measure_draw(vocab)
    log(f"probe: matmul peak {peak:,.0f} GFLOP/s; weight streaming "
        + ", ".join(f"{f} {b:,.1f} GB/s ({sizes[f] / 2**20:,.1f} MiB)" for f, b in bw.items())
        + f"; exact draw {1e9 * draw:,.1f} ns per logit value (vocabulary {vocab})")
    return {"kind": "probe", "peak_gflops": peak, "bandwidth_gbs": bw, "weight_bytes": sizes,
            "draw_ns_per_logit": 1e9 * draw, "draw_vocab": vocab, "load": loadavg()}


def _time_points(points, subjects, o, res: Results, groups: dict):
    """Time every point in plan order (or skip it: ``--max-call-s``); with ``--quality`` pool
    its samples into ``groups``. Returns (rows, skipped rows, {point index: row})."""
    fwd = Forwards(subjects, o.seed)
    rows, skipped, by_point = [], [], {}
    for idx, p in enumerate(points):
        subj = subjects[p.family]
        text = describe_settings(p.kind, p.sampler)
        if o.max_call_s and p.kind != "ar":
            pred = predict_nfe(p, rows) * fwd.estimate(p.family, p.batch, subj.forward_len(p.length))
            if pred > o.max_call_s:
                sk = res.add({"kind": "skipped", "point": idx, "label": p.kind, "sampler": p.sampler.name,
                              "settings": p.sampler.settings(), "settings_text": text, "batch": p.batch,
                              "length": p.length, "sweeps": p.sweeps, "predicted_call_s": pred,
                              "reason": f"predicted {pred:.0f} s per call > --max-call-s {o.max_call_s:g}"})
                skipped.append(sk)
                log(f"[{idx + 1}/{len(points)}] {p.kind} {text} batch {p.batch} length {p.length}: skipped "
                    f"({sk['reason']})")
                continue
        log(f"[{idx + 1}/{len(points)}] {p.kind} {text} batch {p.batch} length {p.length} "
            f"prompt {p.prompt_len} ...")
        row, fn, outs = time_point(p, subj, fwd, o, idx)
        rows.append(res.add(row))
        by_point[idx] = row
        log(f"  {1e3 * row['latency_s']:,.1f} ms/call, NFE {row['nfe']:.1f}, "
            f"{row['tokens_per_s']:,.0f} tokens/s, step/fwd {row['step_over_forward']:.3f} "
            f"(compile {row['compile_s']:.1f} s, "
            f"{row['timed_calls']} timed calls, load {row['load_after']})")
        if o.quality:
            collect(groups, idx, p, fn, outs)
        del outs
    return rows, skipped, by_point
