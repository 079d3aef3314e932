"""``eval=quality``: sample statistics of a trained run next to those of held-out text.

``python -m sandbox.evaluate eval=quality run_dir=<run>`` generates ``num_samples``
samples with the run's EMA weights (``sandbox.core.generate``: same sampler configs, same
checks, one compiled function), then computes ``sandbox.eval.metrics.sample_quality`` for
them *and* for ``num_samples`` held-out windows of the same length (``reference_split``,
default ``val``), so that every figure sits next to the value real text gets.
Generative perplexity is scored by a judge: an exact left-to-right run trained on a
split no model trains on (``python -m sandbox.train experiment=judge``). ``judge_dir=null``
picks the newest such run under ``runs_root`` with the same data and tokenizer config as
the evaluated run; ``judge_dir=none`` skips gen_ppl. The judge must share the run's
tokenizer (checked).

A sampler that pads after EOS (``stop_at_eos``, block diffusion) writes EOS padding after
a sample's end: the statistics then read every sample, and every held-out window, up to and
including its first EOS (``until_eos: true`` in the record), so the judge scores text, not
padding; the EOS statistics (``eos_*``) still describe the whole outputs.

Output: one JSON line appended (atomically) to ``<run_dir>/eval_quality.jsonl``::

    {"kind": "quality", "step", "sampler", "settings", "precision", "seed", "length", "nfe",
     "samples": {metrics}, "reference": {metrics}, "judge_dir", "latency_s_per_sample",
     "tokenizer", "model", "objective", "objective_label", "bound", ...}

the samples themselves in ``<run_dir>/samples/`` (as ``sandbox.sample`` writes them), and
a small table on stdout.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sandbox.core import generate as gen
from sandbox.core.cli import require_int
from sandbox.core.errors import UserError
from sandbox.core.runfiles import append_jsonl
from sandbox.core.runs import LoadedRun, has_checkpoint
from sandbox.data import eval_batches
from sandbox.eval.metrics import Judge, eos_flood, load_judge, sample_quality, until_first_eos

METRICS = ("gen_ppl", "gen_ppl_stderr", "unigram_entropy", "unigram_entropy_pooled", "distinct_1",
           "distinct_2", "distinct_3", "distinct_4", "ast_parse_rate", "ast_parse_rate_lines", "eos_ended",
           "eos_first_frac", "eos_share")


# --- the judge --------------------------------------------------------------------------------
def _container(node):
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def _exact(run_dir: Path) -> bool:
    """Whether a run's evaluations are exact likelihoods (read from its metrics, as written)."""
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "bound" in rec:
            return rec["bound"] == "exact"
    return False


def find_judge(runs_root, run: LoadedRun) -> Path:
    """Newest run under ``runs_root`` with an exact likelihood trained on the ``test`` split
    with the same data and tokenizer config as ``run``; UserError if there is none (a run of
    another exact objective that cannot judge is refused by ``load_judge``)."""
    want_data, want_tok = _container(run.cfg.data), _container(run.cfg.tokenizer)
    found = []
    for cfg_path in Path(runs_root).glob("**/config.yaml"):
        d = cfg_path.parent
        if d.resolve() == run.dir.resolve() or not has_checkpoint(d):
            continue
        try:
            c = OmegaConf.load(cfg_path)
            ok = (c.train.get("train_split", "train") == "test" and _exact(d)
                  and _container(c.data) == want_data and _container(c.tokenizer) == want_tok)
        except Exception:
            continue  # not a run folder
        if ok:
            found.append(((d / "checkpoints").stat().st_mtime, str(d)))
    if not found:
        corpus = run.data.manifest.get("corpus")
        raise UserError(f"judge_dir: no judge run under {runs_root}/ for data={corpus} "
                        f"tokenizer={run.tokenizer.name}; train one with python -m sandbox.train "
                        f"experiment=judge data={corpus} tokenizer={run.tokenizer.name} (same data "
                        "options as the run), or pass judge_dir=<run> or judge_dir=none")
    return Path(max(found)[1])


def resolve_judge(cfg, run: LoadedRun) -> tuple[Judge | None, str | None]:
    jd = cfg.get("judge_dir")
    if isinstance(jd, str) and jd.strip().lower() == "none":
        return None, None
    path = find_judge(cfg.get("runs_root", "runs"), run) if jd is None else Path(str(jd))
    judge = load_judge(path, batch_size=int(cfg.batch_size))
    if judge.tokenizer != dict(run.data.manifest.get("tokenizer", {})):
        raise UserError(f"judge_dir={path}: the judge's tokenizer ({judge.tokenizer.get('name')}, "
                        f"vocabulary {judge.vocab_size}) is not the run's ({run.tokenizer.name}, "
                        f"{run.tokenizer.vocab_size}); train a judge with the run's data and tokenizer")
    if judge.data == _container(run.cfg.data) and judge.train_split == run.train_split:
        print(f"warning: the judge {path} was trained on the run's own training split "
              f"({run.train_split}); gen_ppl will flatter memorised text (use experiment=judge)")
    elif judge.data != _container(run.cfg.data):
        print(f"note: the judge {path} was trained on other data than the run")
    return judge, str(path)


# --- reference text ---------------------------------------------------------------------------
def reference_windows(run: LoadedRun, split: str, n: int, length: int) -> np.ndarray:
    """Up to ``n`` non-overlapping held-out windows [n, length], evenly spaced over ``split``."""
    if split not in run.data.splits:
        raise UserError(f"reference_split={split!r}: choose one of {', '.join(run.data.splits)}")
    tokens = run.data.splits[split]
    if len(tokens) < length + 1:
        raise UserError(f"length={length} is too long for the {split} split ({len(tokens)} tokens); "
                        "lower length")
    batch = next(iter(eval_batches(tokens, batch_size=n, seq_len=length, max_batches=1)))
    if len(batch) < n:
        print(f"note: the {split} split holds only {len(batch)} windows of {length} tokens "
              f"(asked for {n}); the reference uses those")
    return np.asarray(batch, np.int32)


def is_code(flag, run: LoadedRun) -> bool:
    if flag is not None:
        return bool(flag)
    corpus = run.data.manifest.get("corpus")
    path = str(run.cfg.data.get("path") or "")
    return corpus in ("stdlib_code", "stdlib_edits") or (corpus == "text_files" and path.endswith(".py"))


# --- eval=quality -----------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(line: dict) -> str:
    s, r = line["samples"], line["reference"]
    rows = [("metric", "samples", f"reference ({line['reference_split']})")]
    rows += [(k, _fmt(s.get(k)), _fmt(r.get(k))) for k in ("n_samples", *METRICS)
             if s.get(k) is not None or r.get(k) is not None]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    head = (f"quality of {line['run']} ({line['objective']}, step {line['step']}, {line['weights']}) "
            f"with {line['sampler']}: {line['num_samples']} samples x {line['length']} tokens, "
            f"seed {line['seed']}, judge {line['judge_dir'] or 'none'}")
    body = "\n".join(f"  {a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)
    tail = (f"  NFE {line['nfe']:g}, {line['latency_s_per_sample'] * 1e3:.1f} ms/sample "
            f"(batch {line['batch_size']}), compile {line['compile_s']:.1f} s")
    return f"{head}\n{body}\n{tail}"


def quality(cfg) -> dict:
    """eval=quality (module doc). Returns the appended record."""
    num_samples = require_int(cfg, "num_samples", "num_samples", minimum=1)
    s = gen.setup(cfg)
    run = s.run
    judge, judge_dir = resolve_judge(cfg, run)
    code = is_code(cfg.get("code"), run)
    ref = reference_windows(run, str(cfg.get("reference_split", "val")), num_samples, s.length)
    seed = int(cfg.seed)
    g = gen.generate(s, num_samples=num_samples, batch_size=int(cfg.batch_size), seed=seed,
                            progress=bool(cfg.get("progress", True)))
    recs = gen.records(s, g, seed=seed)
    timing = gen.timing(s, g)
    samples_file = gen.default_out(s, num_samples=num_samples, seed=seed)
    gen.write_samples(samples_file, recs, {**run.describe(), "sampler": s.sampler.name,
                                                  "settings": s.sampler.settings(), "length": s.length,
                                                  "seed": seed, **timing})
    eos, cut = run.tokenizer.eos_id, s.sampler.pads_after_eos

    def stats(tokens):
        # the padding after a sample's first EOS is not text: read up to it (samples and held-out
        # windows alike); how the outputs end is a statistic of the whole outputs
        text = until_first_eos(tokens, eos) if cut else tokens
        q = sample_quality([run.tokenizer.decode(t) for t in text], text, judge=judge, code=code)
        return {**q, **eos_flood(tokens, eos)}

    q_samples, q_ref = stats(g.tokens), stats(ref)
    line = {"kind": "quality", "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "run": str(run.dir), "step": run.step, "weights": run.weights,
            "sampler": s.sampler.name, "settings": s.sampler.settings(),
            "precision": s.sampler.precision, "dtype": str(run.model.dtype), "seed": seed,
            "length": s.length, "num_samples": num_samples, "nfe": timing["nfe_mean"], "until_eos": cut,
            "samples": q_samples, "reference": q_ref, "reference_split": str(cfg.get("reference_split")),
            "judge_dir": judge_dir, "judge_step": judge.step if judge else None,
            "judge_window": judge.window if judge else None, "code": code,
            "latency_s_per_sample": timing["latency_s_per_sample"], "batch_size": timing["batch_size"],
            "compile_s": timing["compile_s"], "generated_tokens_per_s": timing["generated_tokens_per_s"],
            "backend": timing["backend"], "samples_file": str(samples_file),
            "tokenizer": run.tokenizer.name, "model": str(run.cfg.model.get("name", "?")),
            **run.objective.describe(), "data": run.data.manifest.get("corpus")}
    out = run.dir / "eval_quality.jsonl"
    append_jsonl(out, [line])
    print(table(line))
    print(f"appended to {out}; samples in {samples_file}")
    return line
