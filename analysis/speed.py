"""Figures of the generation benchmark: ``python -m analysis.speed [results ...] out=DIR``.

Reads ``results.jsonl`` folders written by ``python -m sandbox.bench gen`` (and the
``eval_quality.jsonl`` of the runs they timed); never generates anything. The report's section
on them is :mod:`analysis.sections.speed`; the summary text is :mod:`analysis.gen_summary`.
Draws:

- ``*_quality_vs_nfe.png`` / ``*_quality_vs_latency.png``: sample quality against the
  number of model calls and against latency per sequence (one panel per batch size), with
  the Pareto front of each sampler (ar, mdm_threshold, mdm_ancestral ...) drawn as a
  step line: the settings no other setting of that sampler beats on both axes. This is
  where ``mdm_threshold`` stands against AR at batch 1 and at the largest batch.
- ``*_throughput_vs_batch.png``: generated tokens/s against batch size.
- ``*_latency_vs_length.png``: time per generated token and per sequence at batch 1
  against output length: AR with the KV cache, AR without it (its per-sequence figure is
  extrapolated from the last tokens it generated, see the benchmark's docstring) and the
  diffusion samplers.
- ``*_step_over_forward.png``: each sampler's time per model call over one bare forward
  of the same shape (figure a; the dashed line is the
  :data:`analysis.gen_summary.STEP_TARGET`), against both references the benchmark times: a
  jitted call (filled) and a forward inside a compiled loop (hollow).

Which quality figure: judge bits per byte under the pretrained judge (SmolLM2-135M,
``--text-judge``) when the samples were scored with it, else generative perplexity under
the in-sandbox judge (``--judge``); lower is better for both. Without a judge there is no
quality axis and the quality plots are replaced by a labelled gap: no statistic that
gibberish can win (the distance of the samples' unigram entropy to real text's put 8-step
ancestral gibberish ahead of AR) ranks samples. A judge rewards repetitive text, so points
whose unigram entropy is below 80% of held-out text's are drawn as crosses and left off
the Pareto fronts. Quality is compared at one output length
(the benchmark's ``--length``): statistics of samples of different lengths do not
compare. A point's quality comes from the benchmark's own ``--quality`` samples, or
else from an ``eval_quality.jsonl`` line of the same run, sampler settings and length.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from analysis.errors import ReportError, exit_on_report_error
from analysis.gen_summary import STEP_TARGET
from analysis.load import find_bench_gen, load_bench_gen
from analysis.plotting import finish_axes, label_colors, plt, save_figure


# --- quality ---------------------------------------------------------------------------------
def attach_eval_quality(rows: list[dict], quality_lines: list[dict]) -> None:
    """Fill ``quality`` / ``reference_quality`` of bench rows that lack them from
    ``eval_quality.jsonl`` lines of the same run, sampler settings and output length."""
    for r in rows:
        if r.get("quality"):
            continue
        src = str(r.get("model_source") or "")
        for q in quality_lines:
            same_run = Path(str(q.get("run", ""))).resolve() == Path(src).resolve()
            if (same_run and q.get("sampler") == r["sampler"]
                    and q.get("length") == r["length"] and not r.get("prompt_len")
                    and _same_settings(q.get("settings"), r.get("settings"))):
                r["quality"] = q.get("samples")
                r["reference_quality"] = q.get("reference")
                r["quality_source"] = "eval_quality.jsonl"


def _same_settings(a, b) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    keys = (set(a) | set(b)) - {"use_cache"}
    return all(a.get(k) == b.get(k) for k in keys)


DEGENERATE = 0.8  # samples whose unigram entropy is below this share of real text's are not ranked


def quality_axis(rows: list[dict]):
    """(values aligned with rows [float | None], axis label) or (None, reason).

    Judge bits per byte under the pretrained judge (``--text-judge``) when present, else
    gen-perplexity under the in-sandbox judge (``--judge``). Nothing else: a statistic
    without a judge (the distance of the samples' entropy to real text's) ranks 8-step
    gibberish ahead of AR, so without a judge no quality plot is drawn."""
    for key, label in (("judge_bpb", "judge bits per byte, SmolLM2-135M (lower is better)"),
                       ("gen_ppl", "gen-perplexity under the in-sandbox judge (lower is better)")):
        if any((r.get("quality") or {}).get(key) is not None for r in rows):
            return [(r.get("quality") or {}).get(key) for r in rows], label
    if any(r.get("quality") for r in rows):
        return None, ("no judge scored the samples, and no statistic without one can rank them (the distance "
                      "of their entropy to real text's puts gibberish ahead of AR): rerun the benchmark with "
                      "`--text-judge smollm2_135m` (`make judge` installs it)")
    return None, ("no quality figures: run `python -m sandbox.bench gen --text-judge smollm2_135m` (`make "
                  "judge` installs it) or `python -m sandbox.evaluate eval=quality judge=smollm2` on the "
                  "timed runs")


def degenerate(rows: list[dict], references: list[dict]) -> list[bool]:
    """Per row: whether its samples' unigram entropy is below ``DEGENERATE`` times that of
    held-out text of the same length (repetitive text a judge scores well: marked, not ranked)."""
    ref = {(x.get("family"), x.get("length"), x.get("prompt_len", 0)): x.get("quality") for x in references}
    out = []
    for r in rows:
        q = r.get("quality") or {}
        rq = r.get("reference_quality") or ref.get((r["family"], r["length"], r.get("prompt_len", 0))) or {}
        h, hr = q.get("unigram_entropy"), rq.get("unigram_entropy")
        out.append(h is not None and hr is not None and h < DEGENERATE * hr)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both axes (x lower and y lower are better), sorted by x."""
    front, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


# --- plots -----------------------------------------------------------------------------------
def _group(r: dict) -> str:
    """The Pareto group of a row: its sampler label, apart for each approximate block cache
    (``sampler.cache``), so a cached sampler's front is drawn beside the exact one."""
    cache = (r.get("settings") or {}).get("cache", "none")
    return r["label"] if cache in (None, "none") else f"{r['label']}+{cache}"


def _colors(bench: dict) -> dict:
    """Pareto group -> colour, one palette over the groups of this benchmark."""
    return label_colors([r["label"] for r in bench["rows"]] + [_group(r) for r in bench["rows"]])


def _base_length(bench: dict) -> int | None:
    opt = (bench.get("meta") or {}).get("options") or {}
    if opt.get("length"):
        return int(opt["length"])
    lengths = [r["length"] for r in bench["rows"]]
    return max(set(lengths), key=lengths.count) if lengths else None


def _where(bench: dict) -> str:
    """A title suffix saying where the latencies come from (``bench["where"]``: e.g. measured on
    this CPU, or projected on H200 by ``analysis.roofline``)."""
    return f"\n{bench['where']}" if bench.get("where") else ""


def plot_quality(bench: dict, out: Path, prefix: str) -> tuple[list[str], str]:
    """Quality vs NFE and vs latency per sequence, Pareto front per sampler. Returns
    (written file names, note)."""
    L = _base_length(bench)
    rows = [r for r in bench["rows"] if r["length"] == L and r["label"] != "ar_nocache"]
    vals, label = quality_axis(rows)
    if vals is None:
        return [], label
    bad = degenerate(rows, bench["reference"])
    pts = [({**r, "_degenerate": d}, v) for r, v, d in zip(rows, vals, bad)
           if v is not None and math.isfinite(v)]
    files = []
    # quality vs NFE (batch does not change the distribution; NFE of threshold grows with batch)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = _colors(bench)
    _scatter_fronts(ax, [(r, r["nfe"], v) for r, v in pts], colors, marker_by_batch=True)
    ax.set(xscale="log", xlabel="model calls per sequence (NFE)", ylabel=label,
           title=f"Quality vs NFE (length {L})")
    finish_axes(ax)
    files.append(save_figure(fig, out, f"{prefix}_quality_vs_nfe.png"))
    # quality vs latency, one panel per batch
    batches = sorted({r["batch"] for r, _ in pts})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        _scatter_fronts(ax, [(r, 1e3 * r["latency_per_seq_s"], v) for r, v in pts if r["batch"] == b], colors)
        ax.set(xscale="log", xlabel="latency per sequence (ms)", ylabel=label,
               title=f"Quality vs latency, batch {b} (length {L}){_where(bench)}")
        finish_axes(ax)
    files.append(save_figure(fig, out, f"{prefix}_quality_vs_latency.png"))
    return files, label


def _scatter_fronts(ax, items, colors: dict, marker_by_batch: bool = False):
    groups: dict[str, list] = {}
    for r, x, y in items:
        groups.setdefault(_group(r), []).append((r, x, y))
    for name, g in sorted(groups.items()):
        c = colors[name]
        for r, x, y in g:
            m = "x" if r.get("_degenerate") else ("o" if not marker_by_batch or r["batch"] == 1 else "s")
            ax.scatter([x], [y], color=c, marker=m, s=22, alpha=0.8)
            ax.annotate(r.get("settings_text", ""), (x, y), fontsize=6, alpha=0.7, xytext=(3, 2),
                        textcoords="offset points")
        ranked = [(x, y) for r, x, y in g if not r.get("_degenerate")]
        if ranked:  # degenerate samples (low entropy, which a judge rewards) are not on any front
            fx, fy = zip(*pareto_front(ranked))
            ax.step(fx, fy, where="post", color=c, label=f"{name} (front)")
    if any(r.get("_degenerate") for g in groups.values() for r, _, _ in g):
        ax.scatter([], [], color="grey", marker="x",
                   label=f"degenerate: entropy < {DEGENERATE:.0%} of real text (not ranked)")
    if marker_by_batch:
        ax.scatter([], [], color="grey", marker="o", label="batch 1")
        ax.scatter([], [], color="grey", marker="s", label="batch > 1")


def plot_throughput(bench: dict, out: Path, prefix: str) -> list[str]:
    colors = _colors(bench)
    L = _base_length(bench)
    rows = [r for r in bench["rows"] if r["length"] == L and ({"batch", "tau", "steps"} & set(r["sweeps"]))]
    series: dict[tuple, list] = {}
    for r in rows:
        series.setdefault((r["label"], r["settings_text"]), []).append(r)
    series = {k: v for k, v in series.items() if len({r["batch"] for r in v}) > 1}
    if not series:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (lab, st), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rs], [r["tokens_per_s"] for r in rs], marker="o", color=colors[lab],
                label=f"{lab} {st}", ls="-" if lab == "ar" else "--")
    batches = sorted({r["batch"] for rs in series.values() for r in rs})
    ax.set_xscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set(yscale="log", xlabel="batch (sequences per call)", ylabel="generated tokens / s",
           title=f"Throughput vs batch (length {L}){_where(bench)}")
    finish_axes(ax)
    return [save_figure(fig, out, f"{prefix}_throughput_vs_batch.png")]


def plot_latency_length(bench: dict, out: Path, prefix: str) -> list[str]:
    colors = _colors(bench)
    rows = [r for r in bench["rows"] if r["batch"] == 1 and "length" in r["sweeps"]]
    series: dict[tuple, list] = {}
    for r in rows:
        st = r["settings_text"] if r["label"] != "mdm_ancestral" else "steps=L/" + str(
            round(r["generated"] / max(r["settings"].get("steps", 1), 1)))
        series.setdefault((r["label"], st), []).append(r)
    series = {k: v for k, v in series.items() if len(v) > 1}
    if not series:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (lab, st), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["length"])
        ls = ":" if lab == "ar_nocache" else ("-" if lab == "ar" else "--")
        xs = [r["length"] for r in rs]
        axes[0].plot(xs, [1e3 * r["latency_per_token_s"] for r in rs], marker="o", ls=ls, color=colors[lab],
                     label=f"{lab} {st}")
        # ar_nocache generated only its last tokens: a full generation costs per-token x length
        per_seq = [r["latency_per_token_s"] * (r["length"] - (0 if lab == "ar_nocache" else r["prompt_len"]))
                   for r in rs]
        axes[1].plot(xs, per_seq, marker="o", ls=ls, color=colors[lab],
                     label=f"{lab} {st}" + (" (extrapolated)" if lab == "ar_nocache" else ""))
    lengths = sorted({r["length"] for rs in series.values() for r in rs})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(lengths, [str(x) for x in lengths])
        ax.minorticks_off()
    axes[0].set(yscale="log", xlabel="output length (tokens)", ylabel="ms per generated token",
                title=f"Time per generated token, batch 1{_where(bench)}")
    axes[1].set(yscale="log", xlabel="output length (tokens)", ylabel="s per sequence",
                title=f"Latency per sequence, batch 1{_where(bench)}")
    for ax in axes:
        finish_axes(ax)
    return [save_figure(fig, out, f"{prefix}_latency_vs_length.png")]


def plot_step_ratio(bench: dict, out: Path, prefix: str) -> list[str]:
    colors = _colors(bench)
    rows = [r for r in bench["rows"] if r.get("step_over_forward") and r["label"] != "ar"]
    if not rows:
        return []
    labels = sorted({r["label"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, lab in enumerate(labels):
        rs = [r for r in rows if r["label"] == lab]
        ax.scatter([i - 0.1] * len(rs), [r["step_over_forward"] for r in rs], color=colors[lab], alpha=0.7)
        loop = [r["step_over_forward_loop"] for r in rs if r.get("step_over_forward_loop")]
        ax.scatter([i + 0.1] * len(loop), loop, facecolors="none", edgecolors=colors[lab], alpha=0.9)
    ax.scatter([], [], color="grey", label="vs one jitted forward call")
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="vs a forward in a compiled loop")
    ax.axhline(STEP_TARGET, ls="--", color="k", lw=1, label=f"target {STEP_TARGET}")
    ax.axhline(1.0, ls=":", color="grey", lw=1)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set(ylabel="time per model call / bare forward", title="Sampler time per model call vs a bare forward")
    finish_axes(ax)
    return [save_figure(fig, out, f"{prefix}_step_over_forward.png")]


PLOTS = (plot_throughput, plot_latency_length, plot_step_ratio)


# --- benches to show ---------------------------------------------------------------------------
def pick_benches(paths: list[Path]) -> list[dict]:
    """Per output root (the folder holding ``gen-*``), the newest complete benchmark, or the
    newest interrupted one if none finished."""
    by_root: dict[Path, list[dict]] = {}
    for p in paths:
        b = load_bench_gen(p)
        by_root.setdefault(b["dir"].parent, []).append(b)
    chosen = []
    for _root, bs in sorted(by_root.items()):
        bs.sort(key=lambda b: b["dir"].name)
        done = [b for b in bs if b["complete"]]
        pick = (done or bs)[-1]
        pick["others"] = len(bs) - 1
        chosen.append(pick)
    return chosen


def slug(bench: dict) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", bench["dir"].name)


def draw(bench: dict, out: Path, prefix: str | None = None, plots=PLOTS) -> dict:
    """Every figure of one benchmark (or ``plots`` of them) into ``out``. Returns {figures,
    quality_files, quality_note}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or slug(bench)
    qfiles, note = plot_quality(bench, out, prefix)
    files = list(qfiles)
    for f in plots:
        files += f(bench, out, prefix)
    return {"figures": files, "quality_files": qfiles, "quality_note": note}


@exit_on_report_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path("runs/report")
    pats = []
    for a in argv:
        if a.startswith("out="):
            out = Path(a[4:])
        else:
            pats.append(a)
    paths = find_bench_gen(pats or ["runs/**"])
    if not paths:
        raise ReportError("no generation benchmark results (python -m sandbox.bench gen) under "
                          + ", ".join(pats or ["runs/**"]))
    for b in pick_benches(paths):
        d = draw(b, out)
        print(f"{b['dir']}: " + ", ".join(str(out / f) for f in d["figures"])
              + ("" if d["quality_files"] else f" (no quality plots: {d['quality_note']})"))


if __name__ == "__main__":
    main()
