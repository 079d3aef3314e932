"""Sample quality of the benchmarked points (``bench gen --quality``), after all timing.

- The samples of every point that draws from the same distribution (same model, sampler
  settings and length; batch and KV cache do not change the distribution:
  ``Point.quality_key``) are pooled as they are timed (:func:`collect`), topped up to
  ``--quality-samples`` with untimed calls of the largest batch's compiled function (for
  at most ``--quality-seconds``), and scored by ``sandbox.eval.metrics.sample_quality``
  (gen-perplexity only with ``--judge``; judge bits per byte, ``judge_bpb``, only with
  ``--text-judge smollm2_135m``, the pretrained judge of ``sandbox.eval.judge``; otherwise
  unigram entropy, distinct-n and, for
  code, the parse rates; outputs are scored whole, so a block-diffusion sample's EOS padding
  counts: ``eval=quality`` reads such samples up to their first EOS):
  :func:`quality_pass`, one ``gen_quality`` row per distribution
  naming the points it belongs to, with a few decoded examples
  (``analysis.load.load_bench_gen`` merges them into the points' rows).
- With trained runs the same statistics of held-out windows of the same length are
  recorded as ``reference`` rows (:func:`reference_rows`), so each figure sits next to
  the value real text gets. Random-weight subjects have no data, so no reference.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from sandbox.bench.gen_plan import Point, describe_settings
from sandbox.bench.results import Results, log
from sandbox.core.errors import UserError
from sandbox.eval.metrics import sample_quality

N_EXAMPLES, EXAMPLE_CHARS = 2, 400   # decoded samples kept per distribution


def collect(groups: dict, idx: int, p: Point, fn, outs: list) -> None:
    """Add point ``idx``'s timed outputs to its distribution's pool; ``fn`` (compiled
    function, prompt, key, next call index) tops the pool up later."""
    g = groups.setdefault(p.quality_key(), {"family": p.family, "sampler": p.sampler.name,
                                            "settings": p.sampler.settings(),
                                            "settings_text": describe_settings(p.kind, p.sampler),
                                            "length": p.length, "prompt_len": p.prompt_len,
                                            "points": [], "tokens": [], "fn": None, "batch": 0})
    g["points"].append(idx)
    g["tokens"] += [np.asarray(out[0]) for out in outs]  # (tokens, nfe[, recomputed])
    if p.batch > g["batch"]:  # top-ups use the largest batch's function
        g["fn"], g["batch"] = fn, p.batch


def score(subj, tokens: np.ndarray, prompt_len: int, judge, text_judge=None) -> dict:
    gen = np.asarray(tokens)[:, prompt_len:]
    texts = [subj.tokenizer.decode(t) for t in gen]
    q = sample_quality(texts, gen, judge=judge, code=subj.code, eos_id=subj.tokenizer.eos_id)
    bpb, se = text_judge.bits_per_byte(texts) if text_judge is not None else (None, None)
    return {**q, "judge_bpb": bpb, "judge_bpb_stderr": se}


def quality_pass(groups: dict, subjects, o, judge, res: Results, rows_by_point: dict,
                 text_judge=None) -> list[dict]:
    """Pool the samples of each distribution, top them up, score them; one row per group
    (its quality also set on each of its points' rows)."""
    out = []
    for g in groups.values():
        subj = subjects[g["family"]]
        toks = [np.asarray(t) for t in g["tokens"]]
        n = sum(len(t) for t in toks)
        compiled, prompt, base, i = g["fn"]
        t_start = time.perf_counter()
        while n < o.quality_samples and time.perf_counter() - t_start < o.quality_seconds:
            t = jax.block_until_ready(compiled(subj.params, jax.random.fold_in(base, 10_000 + i), prompt))[0]
            i += 1
            toks.append(np.asarray(t))
            n += len(toks[-1])
        tokens = np.concatenate(toks)[: max(o.quality_samples, 1)]
        q = score(subj, tokens, g["prompt_len"], judge, text_judge)
        examples = [subj.tokenizer.decode(t[g["prompt_len"]:])[:EXAMPLE_CHARS] for t in tokens[:N_EXAMPLES]]
        row = res.add({"kind": "gen_quality", "points": g["points"], "family": g["family"],
                       "sampler": g["sampler"], "settings": g["settings"],
                       "settings_text": g["settings_text"], "length": g["length"],
                       "prompt_len": g["prompt_len"], "judge": o.judge, "text_judge": o.text_judge,
                       "code": subj.code,
                       "quality": q, "examples": examples})
        for pid in g["points"]:
            rows_by_point[pid]["quality"] = q
        out.append(row)
    return out


def reference_rows(subjects, shapes: set[tuple[str, int, int]], o, judge, res: Results,
                   text_judge=None) -> dict:
    """Statistics of held-out text of each generated ``(family, length, prompt_len)``, for
    trained subjects: ``{shape: quality}`` (also written as ``reference`` rows)."""
    from sandbox.eval.quality import reference_windows

    refs = {}
    for fam, length, prompt_len in sorted(shapes):
        subj = subjects[fam]
        if subj.run is None:
            continue
        gen = length - prompt_len
        try:
            windows = reference_windows(subj.run, "val", o.quality_samples, gen)
        except UserError as e:
            log(f"  no reference for {fam} length {gen}: {e}")
            continue
        q = score(subj, windows, 0, judge, text_judge)
        refs[(fam, length, prompt_len)] = q
        res.add({"kind": "reference", "family": fam, "run": subj.source, "split": "val", "length": length,
                 "prompt_len": prompt_len, "generated": gen, "quality": q})
    return refs
