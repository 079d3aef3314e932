"""Regenerate the comparison report from run folders: ``python -m analysis.report``.

Usage::

    python -m analysis.report runs_glob='runs/demo/*' out=runs/demo

Writes ``<out>/report.md`` and its PNG figures next to it. It reads run folders only and
is idempotent: the same runs give the same report. A missing input leaves a labelled gap
in the report instead of a crash.

Sections (each a function that returns Markdown, so later analyses add a section):
- headline (``analysis.scaling``): diffusion-to-AR perplexity ratio per byte at matched
  training FLOPs for each budget (compute-optimal size of each objective; AR interpolated at
  the diffusion run's FLOPs when budgets differ), next to published ratios at far larger scale;
- bits per byte: final held-out figure per run (AR exact; diffusion an upper bound with
  its Monte-Carlo standard error), with steps, tokens and training FLOPs;
- learning curves: held-out bits per byte against training FLOPs and train loss
  against step, one line per run;
- sample quality: the ``<run>/eval_quality.jsonl`` lines of ``python -m sandbox.evaluate
  eval=quality``, each statistic of the samples next to the same statistic of held-out
  text (gen-perplexity only where a judge scored them);
- samples and generation speed: the newest ``python -m sandbox.bench gen`` folder under
  the runs pattern (per output folder): the figures (a) step vs bare forward, (b) AR time
  per token vs length with and without the KV cache, (c) ``mdm_threshold`` vs AR, a table
  of every point, the statistics and a few of the timed samples, and the plots of
  ``analysis.speed`` (quality vs NFE / latency with Pareto fronts, throughput vs batch,
  latency vs output length, step / forward);
- held-out bits per byte vs tokens and vs FLOPs per objective and size; IsoFLOP curves and
  the power-law fit per objective with its confidence intervals; data repetition (bits per
  byte vs epochs at fixed unique data) (``analysis.scaling``);
- code edits: exact match and latency vs diff size from ``<run>/eval_edits*.jsonl``
  (``analysis.edits``, which documents the expected lines);
- runs: every flagged run folder (unfinished, unknown objective, unreadable), left out of
  the fits.

Every section reads the tidy table of ``analysis.load.load_runs`` (``ctx["table"]``) or the
raw records of ``load_metrics`` (``df``).

A section is a function ``(df, out, ctx)`` (or ``(df)`` / ``(df, out)``) returning
Markdown; ``ctx`` carries the runs pattern and folders. A section that fails becomes a
labelled gap; the others still appear.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import speed  # noqa: E402
from analysis.edits import section_edits  # noqa: E402
from analysis.load import (  # noqa: E402
    final_evals,
    find_bench_gen,
    find_runs,
    load_metrics,
    load_quality,
    load_runs,
    read_jsonl,
)
from analysis.scaling import (  # noqa: E402
    section_curves,
    section_headline,
    section_repetition,
    section_runs,
    section_scaling,
)
from sandbox.errors import UserError, exit_on_user_error  # noqa: E402


def _label(row) -> str:
    return f"{row.get('objective') or '?'} / {row.get('model') or '?'} ({row.get('run_name')})"


def _fmt(x, nd=4):
    try:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "–"
        return f"{float(x):.{nd}f}"
    except (TypeError, ValueError):
        return str(x)


def section_bpb(df: pd.DataFrame) -> str:
    ev = final_evals(df)
    if ev.empty:
        return "## Held-out bits per byte\n\n_No evaluation records found in these runs._\n"
    lines = ["## Held-out bits per byte", "",
             "AR figures are exact negative log-likelihoods; diffusion figures are upper bounds "
             "(negative ELBO) with the Monte-Carlo standard error of the bound estimate. Lower is "
             "better. Evaluated with EMA weights on the validation split.", "",
             "| run | objective | model | step | tokens | train FLOPs | val bits/byte | ± s.e. | bound |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for _, r in ev.iterrows():
        lines.append(f"| {r['run_name']} | {r.get('objective')} | {r.get('model')} | {int(r['step'])} | "
                     f"{int(r['tokens']):,} | {float(r['flops']):.3g} | {_fmt(r.get('val_bpb'))} | "
                     f"{_fmt(r.get('val_bpb_stderr'))} | {r.get('bound', '')} |")
    if "true_bpb" in df and df["true_bpb"].notna().any():
        for v in sorted(df["true_bpb"].dropna().unique()):
            lines += ["", f"True entropy rate of the synthetic corpus (computed from the grammar): "
                      f"**{v:.4f} bits per byte**; the gap to it is the models' excess loss."]
    return "\n".join(lines) + "\n"


def plot_curves(df: pd.DataFrame, out: Path) -> str:
    if df.empty or "kind" not in df:
        return "## Learning curves\n\n_No metrics to plot._\n"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ev = df[df["kind"] == "eval"]
    tr = df[df["kind"] == "train"]
    for _run, g in ev.groupby("run"):
        g = g.sort_values("flops")
        first = g.iloc[0]
        (line,) = axes[0].plot(g["flops"], g["val_bpb"], marker="o", ms=3, label=_label(first))
        if "val_bpb_stderr" in g and g["val_bpb_stderr"].notna().any():
            axes[0].fill_between(g["flops"], g["val_bpb"] - 2 * g["val_bpb_stderr"],
                                 g["val_bpb"] + 2 * g["val_bpb_stderr"], alpha=0.2,
                                 color=line.get_color())
    for _run, g in tr.groupby("run"):
        g = g.sort_values("step")
        axes[1].plot(g["step"], g["train_loss"], label=_label(g.iloc[0]))
    axes[0].set(xlabel="training FLOPs", ylabel="held-out bits per byte (diffusion: upper bound)",
                title="Held-out bits per byte vs compute")
    axes[1].set(xlabel="step", ylabel="train loss (nats/token)", title="Training loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ("## Learning curves\n\n![learning curves](learning_curves.png)\n\n"
            "Shaded bands: ±2 standard errors of the diffusion bound.\n")


def _q(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _settings_text(settings) -> str:
    if not isinstance(settings, dict):
        return str(settings or "")
    keys = ("steps", "tau", "block_size", "grid", "temperature", "top_k", "top_p", "use_cache")
    return " ".join(f"{k}={settings[k]}" for k in keys if k in settings)


def section_quality(df: pd.DataFrame, out: Path, ctx: dict) -> str:
    head = "## Sample quality (`python -m sandbox.evaluate eval=quality`)\n\n"
    q = load_quality(ctx["runs"])
    if q.empty:
        return head + ("_No sample-quality evaluations in these runs (no `eval_quality.jsonl`): run "
                       "`python -m sandbox.evaluate eval=quality run_dir=<run>`._\n")
    lines = [head.rstrip(), "",
             "Each statistic of the samples next to the same statistic of held-out text of the same "
             "length (`real`). gen-ppl: perplexity under an AR judge trained on a disjoint split (lower "
             "is better, but read it with the entropy: low-entropy repetitive samples score well); "
             "`–`: not computed (no judge: train one with `python -m sandbox.train experiment=judge`; "
             "parse rates only for code).", "",
             "| run | objective | sampler | settings | length | n | NFE | gen-ppl (real) | entropy (real) "
             "| distinct-4 (real) | parses, block (real) | ms/sample |",
             "|---|---|---|---|---:|---:|---:|---|---|---|---|---:|"]
    for _, r in q.iterrows():
        def pair(m, nd=3, r=r):
            return f"{_q(r.get('s_' + m), nd)} ({_q(r.get('r_' + m), nd)})"
        lat = r.get("latency_s_per_sample")
        lines.append(f"| {r['run_name']} | {r.get('objective')} | {r.get('sampler')} | "
                     f"{_settings_text(r.get('settings'))} | {r.get('length')} | {r.get('s_n_samples')} | "
                     f"{_q(r.get('nfe'), 1)} | {pair('gen_ppl', 2)} | {pair('unigram_entropy')} | "
                     f"{pair('distinct_4')} | {pair('ast_parse_rate_lines', 2)} | "
                     f"{_q(1e3 * lat if isinstance(lat, (int, float)) else None, 1)} |")
    if q["s_gen_ppl"].isna().all():
        lines += ["", "_gen-ppl: no judge scored these samples; train one with `python -m sandbox.train "
                  "experiment=judge` and rerun the evaluation._"]
    return "\n".join(lines) + "\n"


def _speed_table(rows: list[dict]) -> list[str]:
    lines = ["| sampler | settings | sweeps | B | L | P | NFE | tok/fwd | ms/seq | ms/token | tokens/s | "
             "step/fwd | compile s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r.get('settings_text', '')} | {','.join(r.get('sweeps', []))} | "
                     f"{r['batch']} | {r['length']} | {r['prompt_len']} | {r['nfe']:.1f} | "
                     f"{_q(r.get('tokens_per_forward'), 2)} | {1e3 * r['latency_per_seq_s']:,.2f} | "
                     f"{1e3 * r['latency_per_token_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{_q(r.get('step_over_forward'), 3)} | {_q(r.get('compile_s'), 1)} |")
    return lines


def _sample_table(bench: dict) -> list[str]:
    qs = [r for r in bench.get("quality_rows", [])]
    if not qs:
        return ["_No sample statistics: the benchmark ran without `--quality`._"]
    refs = {(x.get("family"), x.get("length"), x.get("prompt_len", 0)): x.get("quality") or {}
            for x in bench["reference"]}
    lines = ["| family | sampler | settings | length | n | gen-ppl | entropy (real) | distinct-4 (real) | "
             "parses, block (real) |", "|---|---|---|---:|---:|---|---|---|---|"]
    for g in qs:
        q = g.get("quality") or {}
        ref = refs.get((g.get("family"), g.get("length"), g.get("prompt_len", 0))) or {}

        def pair(m, nd=3, q=q, ref=ref):
            return f"{_q(q.get(m), nd)} ({_q(ref.get(m), nd)})"
        label = g.get("sampler") if g.get("family") != "ar" else "ar"
        lines.append(f"| {g.get('family')} | {label} | {g.get('settings_text', '')} | {g.get('length')} | "
                     f"{q.get('n_samples')} | {_q(q.get('gen_ppl'), 2)} | {pair('unigram_entropy')} | "
                     f"{pair('distinct_4')} | {pair('ast_parse_rate_lines', 2)} |")
    if not any((g.get("quality") or {}).get("gen_ppl") is not None for g in qs):
        lines += ["", "_gen-ppl needs a judge: train one with `python -m sandbox.train experiment=judge` and "
                  "pass `--judge <run>` to the benchmark. Without it the figures above compare the samples' "
                  "statistics with held-out text's (`real`; needs trained runs)._"]
    examples = [(g, e) for g in qs for e in (g.get("examples") or [])[:1]]
    if examples:
        lines += ["", "One timed sample per setting (generated tokens only, first 400 characters):", ""]
        for g, e in examples:
            lines += [f"`{g.get('family')}` {g.get('sampler')} {g.get('settings_text', '')}:", "",
                      "```", e.replace("```", "`\u200b``"), "```", ""]
    return lines


def section_speed(df: pd.DataFrame, out: Path, ctx: dict) -> str:
    head = "## Samples and generation speed (`python -m sandbox.bench gen`)"
    paths = find_bench_gen(ctx["runs_glob"])
    if not paths:
        return (head + "\n\n_No generation benchmark under this pattern: run `python -m sandbox.bench gen` "
                "(`--ar-run/--mdm-run` for trained models, `--quality` for sample statistics)._\n")
    from sandbox.bench_gen import format_summary, summarize

    raw = []  # eval_quality lines, to give quality to benchmark points timed without --quality
    for run in ctx["runs"]:
        raw += [{**r, "run": str(run)} for r in read_jsonl(Path(run) / "eval_quality.jsonl")]
    parts = [head, ""]
    for bench in speed.pick_benches(paths):
        rows = bench["rows"]
        speed.attach_eval_quality(rows, raw)
        bench["quality_rows"] = [r for r in read_jsonl(bench["dir"] / "results.jsonl")
                                 if r.get("kind") == "gen_quality"]
        meta = bench["meta"]
        subj = meta.get("subjects") or {}
        status = "complete" if bench["complete"] else "**interrupted: partial results**"
        parts += [f"### `{bench['dir']}` ({status})", ""]
        if bench.get("others"):
            parts += [f"_{bench['others']} older benchmark folder(s) next to it are not shown._", ""]
        for fam, s in subj.items():
            parts.append(f"- {fam}: {'random weights' if s.get('source') == 'random' else s.get('source')} "
                         f"({s.get('model')}, {s.get('params', 0):,} non-embedding parameters"
                         + (f", step {s['step']}" if s.get("step") is not None else "") + ")")
        parts += [f"- {meta.get('backend')} {meta.get('device')}, {meta.get('cpu_count')} cpus; every point: "
                  "one compiled function, compile time apart, warm-up, median of timed calls "
                  "(`block_until_ready`); step/fwd = time per model call / one bare forward of the same "
                  "shape timed between the calls.", ""]
        if not rows:
            parts += ["_No point was measured (the benchmark stopped before its first point)._", ""]
            continue
        refs = {(x.get("family"), x.get("length"), x.get("prompt_len", 0)): x.get("quality")
                for x in bench["reference"]}
        summ = summarize(rows, refs)
        text = format_summary(summ, rows, bench["skipped"], refs, list(meta.get("random_weights") or []))
        parts += ["```", text.strip(), "```", ""]
        figs = speed.draw(bench, out)
        if figs["quality_files"]:
            note = figs["quality_note"]
            if "entropy" in note:
                note += ": the distance of the samples' unigram entropy to that of held-out text of the " \
                        "same length; lower is closer to real text, and collapsed (repetitive) samples " \
                        "score badly. gen-perplexity needs a judge (`python -m sandbox.train " \
                        "experiment=judge`, then `--judge <run>`)"
            parts += [f"Quality axis: {note}. Step lines: the Pareto front of each sampler (settings "
                      "that no other setting of the same sampler beats on both axes).", ""]
            parts += [f"![{f}]({f})" for f in figs["quality_files"]] + [""]
        else:
            parts += [f"_Quality vs NFE / latency: not drawn ({figs['quality_note']})._", ""]
        other = [f for f in figs["figures"] if f not in figs["quality_files"]]
        parts += [f"![{f}]({f})" for f in other] + [""]
        for name, fn in (("throughput vs batch", "throughput_vs_batch"),
                         ("latency vs length", "latency_vs_length")):
            if not any(f.endswith(fn + ".png") for f in other):
                parts += [f"_{name}: not drawn (needs points at two or more values of that axis)._", ""]
        parts += ["#### Samples", ""] + _sample_table(bench) + [""]
        parts += ["#### Every point", ""] + _speed_table(rows) + [""]
        if bench["skipped"]:
            parts += ["Skipped: " + "; ".join(f"{s['label']} {s.get('settings_text', '')} batch {s['batch']} "
                                              f"length {s['length']} ({s['reason']})"
                                              for s in bench["skipped"]), ""]
    return "\n".join(parts) + "\n"


SECTIONS = [section_headline, section_bpb, plot_curves, section_curves, section_scaling, section_repetition,
            section_quality, section_speed, section_edits, section_runs]


def build_report(runs_glob: str | list[str], out: str | Path, title: str = "Report") -> Path:
    out = Path(out)
    runs = find_runs(runs_glob)
    if not runs and not find_bench_gen(runs_glob):
        raise UserError(f"runs_glob={runs_glob!r}: no run folders (with metrics.jsonl) or benchmark "
                        "results match; train first or fix the pattern")
    out.mkdir(parents=True, exist_ok=True)
    df = load_metrics(runs)
    ctx = {"runs_glob": runs_glob, "runs": runs, "table": load_runs(runs)}
    parts = [f"# {title}", "", f"Runs: {len(runs)} (from `{runs_glob}`). Regenerate with "
             f"`python -m analysis.report runs_glob='{runs_glob}' out={out}`.", "",
             "Held-out bits per byte: AR figures are exact negative log-likelihoods; **diffusion "
             "figures (mdlm, bd3lm) are upper bounds** (negative ELBO), reported with their Monte-Carlo "
             "standard error.",
             ""]
    for section in SECTIONS:
        n = section.__code__.co_argcount
        try:
            parts.append(section(df, out, ctx) if n == 3 else section(df, out) if n == 2 else section(df))
        except Exception as e:  # a broken section must not hide the others
            parts.append(f"## {section.__name__}\n\n_Could not be produced: {type(e).__name__}: {e}_\n")
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def _parse(argv: list[str]) -> dict:
    args = {"runs_glob": "runs/**", "out": "runs/report", "title": "Diffusion vs autoregressive: report"}
    for a in argv:
        if "=" not in a:
            raise UserError(f"argument '{a}': expected key=value (keys: {', '.join(args)})")
        k, v = a.split("=", 1)
        if k not in args:
            raise UserError(f"argument '{k}': unknown key (keys: {', '.join(args)})")
        args[k] = v
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    path = build_report(args["runs_glob"], args["out"], args["title"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
