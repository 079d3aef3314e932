"""``python -m sandbox.evaluate eval=edits run_dir=<run>``: code-edit exact match and latency.

Reads a run trained on ``data=stdlib_edits`` (``sandbox.tasks.edits.task``), generates the
target of every frozen test item (or ``split=val``, or every edit of a user's JSONL file:
``test_file=PATH``, ``sandbox.tasks.edits.external``) one edit at a time, scores it with
``sandbox.tasks.edits.metrics`` and appends to ``<run>/eval_edits.jsonl`` one summary line per
(format, sampler setting) and one latency line per edit (the format documented in
``analysis/sections/edits.py``, which draws the plots). Predictions go to ``<run>/edits/``.

Design choices:

* **One edit per call, timed.** The latency of an edit is what a user waits for: batch 1,
  one compiled function (every prompt has the same left-padded length), compile time
  reported apart, ``block_until_ready`` around each call. NFE is the sampler's count.
* **Decoding is greedy by default** (``greedy: true`` sets ``precision=greedy``): exact match
  asks for the most likely edit, not a sample. AR stops at the first EOS (``stop_at_eos``),
  so its latency grows with the target length; a diffusion sampler fills the whole
  EOS-padded canvas, so its latency follows its NFE (``mdm_threshold`` by default: it reveals
  every position whose greedy token has probability >= tau per call).
* **Diffusion's in-place variants** (``variants``, ``whole`` runs only): ``canvas`` (the full
  masked canvas, reported as format ``whole``), ``oracle_length`` (positions after the gold
  length are given as EOS: ``inplace_oracle_length``) and ``oracle_positions`` (every canvas
  token that a token-level diff of before -> after leaves unchanged is given; only the
  changed tokens are masked: ``inplace_oracle_positions``). Oracles use the gold answer, so
  they are upper bounds on what knowing the length / the edit's location buys.
* **Edit-native runs** (``data.format=native``, ``sandbox.tasks.edits.native``): ``native``
  (the model locates the lines to rewrite, then fills their slots) and ``native_oracle_lines``
  (the gold lines are given: the upper bound on locating). Scored as ``whole`` targets.
* **Items that do not fit** the run's prompt or canvas count as failures (``n_too_long``).
* Baselines on the same items: ``copy`` (the input unchanged) and ``oracle`` (the gold edit).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import OmegaConf
from tqdm import tqdm

from sandbox.core.cli import CONF_DIR, instantiate, require_int
from sandbox.core.errors import UserError
from sandbox.core.flops import call_work
from sandbox.core.mesh import backend
from sandbox.core.runfiles import append_jsonl, atomic_write_text
from sandbox.core.runs import LoadedRun, load_run
from sandbox.tasks.edits.external import SPLIT as FILE_SPLIT
from sandbox.tasks.edits.external import EditFile, read_edit_file
from sandbox.tasks.edits.metrics import aggregate, baseline, score
from sandbox.tasks.edits.native import native_decoder
from sandbox.tasks.edits.source import DIFF_BINS
from sandbox.tasks.edits.task import NATIVE, target_text

VARIANTS = ("canvas", "oracle_length", "oracle_positions")
NATIVE_VARIANTS = ("native", "native_oracle_lines")  # a data.format=native run (.native)
# metrics.score keys -> the summary's metric names (read by analysis/sections/edits.py)
NAMES = {"exact": "exact_match", "ast": "ast_match", "parses": "parse_rate", "applies": "apply_rate",
         "no_op": "noop_rate", "line_precision": "changed_line_precision",
         "line_recall": "changed_line_recall"}


# settings that do not change what an edit decodes to (ids, names, cache layout)
_PLUMBING = {"name", "family", "mask_id", "bos_id", "eos_id", "banned_ids", "chunk", "use_cache",
             "stop_at_eos"}


def short_settings(sampler) -> dict:
    """The sampler settings that label a result: what changes the decoded edit, without the
    ones that cannot matter (greedy: temperature / top-k / top-p; threshold: steps) or sit at
    their plain value (one block, uniform grid). ``sampler_settings`` keeps them all."""
    out = {k: v for k, v in sampler.settings().items() if k not in _PLUMBING}
    drop = set()
    if out.get("precision") == "greedy":
        drop |= {"temperature", "top_k", "top_p"}
    if not getattr(sampler, "uses_steps", True):
        drop |= {"steps", "grid"}
    if out.get("block_size") == 0:
        drop.add("block_size")
    if out.get("grid") == "uniform":
        drop.add("grid")
    return {k: v for k, v in out.items() if k not in drop}


def _renamed(means: dict) -> dict:
    return {NAMES.get(k, k): v for k, v in means.items()}


# --- setup ------------------------------------------------------------------------------------
def build_sampler(cfg, run: LoadedRun):
    node = cfg.get("sampler")
    if node is None:
        name = run.objective.edit_sampler  # the objective says how it decodes an edit
        if name is None:
            raise UserError(f"eval=edits: objective={run.objective.name} names no edit_sampler (it does "
                            "not train on conditional data); name one with sampler=<name>")
        node = OmegaConf.load(Path(CONF_DIR) / "sampler" / f"{name}.yaml")
    sampler = instantiate(node, "sampler").bind(run.tokenizer)
    if bool(cfg.get("greedy", True)):
        sampler = sampler.replace(precision="greedy")
    if sampler.family == "ar":  # AR stops at its first EOS; a diffusion canvas is filled whole
        sampler = sampler.replace(stop_at_eos=True)
    src = run.data
    sampler = sampler.for_checkpoint(run.objective)  # what training fixed (the prompt cache of prompt=self)
    sampler.check(family=run.objective.sampler_family, objective=run.objective.name, length=src.seq_len,
                  prompt_len=src.prompt_len)
    return sampler


def variants_for(cfg, run: LoadedRun, sampler) -> list[str]:
    if sampler.family != "mdm":
        return ["canvas"]
    known = NATIVE_VARIANTS if run.data.format == NATIVE else VARIANTS
    asked = cfg.get("variants")
    asked = list(known) if asked is None else [asked] if isinstance(asked, str) else list(asked)
    for v in asked:
        if v not in known:
            raise UserError(f"variants: unknown value '{v}' for a data.format={run.data.format} run "
                            f"(choose from {', '.join(known)})")
    if run.data.format != "whole":  # oracle positions index the edited function's tokens
        asked = [v for v in asked if v != "oracle_positions"]
    return asked


def format_name(fmt: str, variant: str) -> str:
    if variant in NATIVE_VARIANTS:
        return variant
    return fmt if variant == "canvas" else f"inplace_{variant}"


def read_test_file(cfg) -> EditFile | None:
    """``test_file=PATH``: the edits to score instead of a frozen split (None without it)."""
    if cfg.get("test_file") is None:
        return None
    for key, plain in (("tiers", None), ("split", "test")):
        if cfg.get(key, plain) != plain:
            raise UserError(f"{key}={cfg.get(key)}: selects from the frozen sets, not from test_file="
                            f"{cfg.test_file}; drop it (a test_file is filtered by kinds= and max_per_kind=)")
    return read_edit_file(cfg.test_file)


def select_items(cfg, run: LoadedRun, external: EditFile | None = None):
    src = run.data
    if external is not None:  # every edit of the file, of the asked kinds (any label)
        split, items = FILE_SPLIT, external.select(cfg.get("kinds"))
    else:
        split = str(cfg.get("split", "test"))
        tiers = cfg.get("tiers") or list(src.tiers)
        items = src.data.items(split, cfg.get("kinds"), tiers)
    per_kind = cfg.get("max_per_kind")
    if per_kind is not None:
        n = require_int(cfg, "max_per_kind", "max_per_kind", minimum=1)
        by = defaultdict(list)
        for it in items:
            by[it.kind].append(it)
        # evenly spaced within each kind, so tiers and functions stay mixed
        items = [g[i * len(g) // min(n, len(g))] for g in by.values() for i in range(min(n, len(g)))]
    return split, items


# --- canvases ---------------------------------------------------------------------------------
def canvas(src, item, variant: str, mask_id: int) -> np.ndarray | None:
    """The initial diffusion canvas [target_len] for ``item`` (module doc), or None if the
    gold target does not fit (only the oracles need it)."""
    tok, t_len = src.tokenizer, src.target_len
    z = np.full(t_len, mask_id, np.int32)
    if variant == "canvas":
        return z
    gold = tok.encode(target_text(item, src.format))
    if len(gold) + 1 > t_len:
        return None
    z[len(gold):] = tok.eos_id
    if variant == "oracle_positions":
        sm = difflib.SequenceMatcher(None, tok.encode(item.before), gold, autojunk=False)
        for block in sm.get_matching_blocks():
            z[block.b:block.b + block.size] = gold[block.b:block.b + block.size]
    return z


def compile_fn(run: LoadedRun, sampler, prompt_len: int, length: int):
    """jit(params, key, x[1, L or P]) -> (tokens[1, L], nfe[, computed]): AR reads the prompt, a
    diffusion sampler reads the whole initial canvas (``infill_cost`` from ``prompt_len``: it also
    counts the token positions its forwards computed)."""
    graphdef = run.graphdef
    if sampler.family == "mdm":
        def fn(params, key, z):  # (tokens, nfe, positions computed): the last for the roofline model
            return sampler.infill_cost(nnx.merge(graphdef, params), key, z, prompt_len)
    else:
        def fn(params, key, prompt):
            return sampler.generate(nnx.merge(graphdef, params), key, prompt, length)
    return jax.jit(fn)


# --- the evaluation -----------------------------------------------------------------------------
def make_decoder(run: LoadedRun, sampler, variant: str):
    """(decode, compile_s): ``decode(item, key) -> (output text | None, nfe, seconds)`` for one
    item at batch 1, compiled before the first timed call (``None``: the item does not fit)."""
    if variant in NATIVE_VARIANTS:
        return native_decoder(run, sampler, oracle=variant == "native_oracle_lines")
    src = run.data
    fn = compile_fn(run, sampler, src.prompt_len, src.seq_len)
    mdm = sampler.family == "mdm"
    state = {"compiled": None, "compile_s": 0.0}

    def decode(item, key):
        prompt = src.prompt(item)
        z = None if prompt is None or not mdm else canvas(src, item, variant, sampler.mask_id)
        if prompt is None or (mdm and z is None):
            return None, 0, 0.0
        x = jnp.asarray((prompt if z is None else np.concatenate([prompt, z]))[None, :])
        if state["compiled"] is None:
            t0 = time.perf_counter()
            state["compiled"] = fn.lower(run.params, key, x).compile()
            state["compile_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens, nfe, *computed = jax.block_until_ready(state["compiled"](run.params, key, x))
        dt = time.perf_counter() - t0
        state["computed"] = float(computed[0]) if computed else None
        return src.decode_target(np.asarray(tokens)[0, src.prompt_len:]), int(nfe), dt

    decode.computed = lambda: state.get("computed")  # positions the last call computed (diffusion)

    return decode, lambda: state["compile_s"]


def run_variant(run: LoadedRun, sampler, items, variant: str, seed: int, progress: bool) -> dict:
    fmt = run.data.score_format
    decode, compile_s = make_decoder(run, sampler, variant)
    base = jax.random.PRNGKey(seed)
    preds, scores, lat = [], [], []
    bar = tqdm(items, disable=not progress, desc=f"{sampler.name} {format_name(run.data.format, variant)}",
               unit="edit", dynamic_ncols=True, mininterval=1.0)
    for i, it in enumerate(bar):
        out, nfe, dt = decode(it, jax.random.fold_in(base, i))
        if out is None:
            preds.append({"id": it.id, "output": None, "too_long": True})
            scores.append(score(it.before, it.after, None, fmt))
            continue
        s = score(it.before, it.after, out, fmt)
        preds.append({"id": it.id, "output": out, "exact": s["exact"], "nfe": nfe, "latency_s": dt})
        scores.append(s)
        computed = decode.computed() if hasattr(decode, "computed") else None
        lat.append({"id": it.id, "edit_kind": it.kind, "diff_tokens": it.changed_tokens(),
                    "function_bytes": len(it.before.encode()), "latency_s": dt, "nfe": nfe,
                    "exact": bool(s["exact"]), "bin": it.diff_bin,
                    "work": call_work(sampler, run.model, 1, run.data.seq_len, run.data.prompt_len, nfe,
                                      computed),
                    "dtype": str(jnp.dtype(run.model.dtype))})
    return {"preds": preds, "scores": scores, "lat": lat, "compile_s": compile_s()}


def baselines(items, fmt: str) -> dict:
    """Copy-the-input and oracle scores of ``items`` in ``fmt`` (summary metric names)."""
    return {k: _renamed(aggregate(items, [score(it.before, it.after, baseline(it, k, fmt), fmt)
                                          for it in items])["all"]) for k in ("copy", "oracle")}


def summarize(run: LoadedRun, sampler, items, split: str, variant: str, r: dict, seed: int,
              bases: dict) -> dict:
    fmt = run.data.format
    agg = aggregate(items, r["scores"])
    lat = r["lat"]
    by_bin = {b: _renamed(m) for b, m in agg["by_bin"].items()}
    for b in by_bin:
        ls = [x["latency_s"] for x in lat if x["bin"] == b]
        by_bin[b]["latency_s"] = float(np.mean(ls)) if ls else None
        by_bin[b]["latency_s_median"] = float(np.median(ls)) if ls else None
    return {"kind": "edits", "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "run": str(run.dir), "step": run.step, "weights": run.weights, **run.objective.describe(),
            "model": str(run.cfg.model.get("name", "?")), "tokenizer": run.tokenizer.name,
            "format": format_name(fmt, variant), "trained_format": fmt, "sampler": sampler.name,
            "settings": short_settings(sampler), "sampler_settings": sampler.settings(),
            "precision": sampler.precision, "seed": seed, "split": split,
            "n": len(items), "n_too_long": sum(1 for p in r["preds"] if p.get("too_long")),
            "metrics": _renamed(agg["all"]),
            "by_kind": {k: _renamed(m) for k, m in agg["by_kind"].items()}, "by_diff_size": by_bin,
            "latency_s_per_edit": float(np.mean([x["latency_s"] for x in lat])) if lat else None,
            "latency_s_median": float(np.median([x["latency_s"] for x in lat])) if lat else None,
            "nfe_per_edit": float(np.mean([x["nfe"] for x in lat])) if lat else None,
            "compile_s": r["compile_s"], "backend": backend(), "baselines": bases,
            "diff_bins": list(DIFF_BINS),
            "prompt_len": run.data.prompt_len, "target_len": run.data.target_len}


def table(line: dict) -> str:
    m = line["metrics"]
    head = (f"{line['format']} / {line['sampler']} on {line['n']} {line['split']} items "
            f"({line['n_too_long']} too long): exact {m['exact_match']:.3f}, AST {m['ast_match']:.3f}, "
            f"parses {m['parse_rate']:.3f}, no-op {m['noop_rate']:.3f}; "
            f"{1e3 * (line['latency_s_per_edit'] or 0):.1f} ms/edit, NFE {line['nfe_per_edit'] or 0:.1f}")
    rows = [f"  {k:<12} n={v['n']:<4} exact {v['exact_match']:.3f}" for k, v in line["by_kind"].items()]
    rows += [f"  diff {b:<7} n={v['n']:<4} exact {v['exact_match']:.3f}  "
             f"{1e3 * (v['latency_s'] or 0):.1f} ms" for b, v in line["by_diff_size"].items()]
    return "\n".join([head, *rows])


def edits(cfg) -> list[dict]:
    """eval=edits (module doc). Returns the summary lines it appended."""
    if OmegaConf.is_missing(cfg, "run_dir") or cfg.run_dir is None:
        raise UserError("run_dir: required; pass a run trained with data=stdlib_edits")
    seed = require_int(cfg, "seed", "seed", minimum=0)
    external = read_test_file(cfg)  # before the run loads: a bad file fails at once, writing nothing
    source = external.describe() if external is not None else {}  # which file the records score
    run = load_run(cfg.run_dir, weights=str(cfg.get("weights", "ema")))
    if not getattr(run.data, "conditional", False) or not hasattr(run.data, "decode_target"):
        raise UserError(f"run_dir={cfg.run_dir}: trained on data={run.data.manifest.get('corpus')}, not "
                        "data=stdlib_edits; eval=edits needs an edit run")
    sampler = build_sampler(cfg, run)
    split, items = select_items(cfg, run, external)
    out_dir = run.dir / "edits"
    bases = baselines(items, run.data.score_format)  # the same for every variant: scored once
    lines, records = [], []
    for variant in variants_for(cfg, run, sampler):
        r = run_variant(run, sampler, items, variant, seed, bool(cfg.get("progress", True)))
        line = summarize(run, sampler, items, split, variant, r, seed, bases)
        line.update(source)
        tag = hashlib.sha256(json.dumps([line["sampler_settings"], split, [it.id for it in items],
                                         *source.values()], sort_keys=True).encode()).hexdigest()[:8]
        pred_file = out_dir / f"{line['format']}-{sampler.name}-{tag}-seed{seed}.jsonl"
        out_dir.mkdir(exist_ok=True)
        preds = r["preds"] if external is None else external.label(r["preds"])
        atomic_write_text(pred_file, "".join(json.dumps(p) + "\n" for p in preds))
        line["predictions"] = str(pred_file)
        keys = {**{k: line[k] for k in ("run", "format", "sampler", "settings")}, **source}
        records += [line, *({"kind": "edits_latency", **keys, "diff_bin": x["bin"],
                             **{k: v for k, v in x.items() if k != "bin"}} for x in r["lat"])]
        print(table(line))
        lines.append(line)
    path = run.dir / "eval_edits.jsonl"
    append_jsonl(path, records)
    print(f"appended {len(lines)} summaries and their per-edit latencies to {path}")
    return lines
