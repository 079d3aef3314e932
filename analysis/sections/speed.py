"""Samples and generation speed: the newest ``python -m sandbox.bench gen`` folder under the
runs pattern (per output folder; the newest complete one, else the newest interrupted one).

For each: the models timed, the benchmark's own summary text (figures a, b, c:
:mod:`analysis.gen_summary`, the same text the benchmark prints), the figures of
:mod:`analysis.speed` (quality vs NFE / latency with Pareto fronts, throughput vs batch,
latency vs output length, step / forward), the sample statistics with one sample per setting,
and a table of every timed point. Points timed without ``--quality`` take their quality from
an ``eval_quality.jsonl`` line of the same run, sampler settings and length.
"""

from __future__ import annotations

from pathlib import Path

from analysis import speed
from analysis.context import Context
from analysis.formatting import fixed
from analysis.gen_summary import format_summary, summarize
from analysis.load import find_bench_gen, read_jsonl
from analysis.sections import gap, hardware

HEADING = "## Samples and generation speed (`python -m sandbox.bench gen`)"


def _speed_table(rows: list[dict]) -> list[str]:
    lines = ["| sampler | settings | sweeps | B | L | P | NFE | tok/fwd | ms/seq | ms/token | tokens/s | "
             "step/fwd | compile s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r.get('settings_text', '')} | {','.join(r.get('sweeps', []))} | "
                     f"{r['batch']} | {r['length']} | {r['prompt_len']} | {r['nfe']:.1f} | "
                     f"{fixed(r.get('tokens_per_forward'), 2)} | {1e3 * r['latency_per_seq_s']:,.2f} | "
                     f"{1e3 * r['latency_per_token_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{fixed(r.get('step_over_forward'), 3)} | {fixed(r.get('compile_s'), 1)} |")
    return lines


def _sample_table(bench: dict) -> list[str]:
    qs = bench["quality_rows"]
    if not qs:
        return ["_No sample statistics: the benchmark ran without `--quality`._"]
    refs = {(x.get("family"), x.get("length"), x.get("prompt_len", 0)): x.get("quality") or {}
            for x in bench["reference"]}
    lines = ["| family | sampler | settings | length | n | judge bpb (real) | gen-ppl | entropy (real) | "
             "distinct-4 (real) | parses, block (real) |", "|---|---|---|---:|---:|---|---|---|---|---|"]
    for g in qs:
        q = g.get("quality") or {}
        ref = refs.get((g.get("family"), g.get("length"), g.get("prompt_len", 0))) or {}

        def pair(m, nd=3, q=q, ref=ref):
            return f"{fixed(q.get(m), nd)} ({fixed(ref.get(m), nd)})"
        lines.append(f"| {g.get('family')} | {g.get('sampler')} | {g.get('settings_text', '')} | "
                     f"{g.get('length')} | {q.get('n_samples')} | {pair('judge_bpb', 2)} | "
                     f"{fixed(q.get('gen_ppl'), 2)} | "
                     f"{pair('unigram_entropy')} | {pair('distinct_4')} | "
                     f"{pair('ast_parse_rate_lines', 2)} |")
    if not any((g.get("quality") or {}).get("judge_bpb") is not None for g in qs):
        lines += ["", "_judge bpb needs the pretrained judge: `make judge`, then pass "
                  "`--text-judge smollm2_135m` "
                  "to the benchmark. Without a judge the figures above describe the samples next to held-out "
                  "text's (`real`; needs trained runs) and rank nothing._"]
    examples = [(g, e) for g in qs for e in (g.get("examples") or [])[:1]]
    if examples:
        lines += ["", "One timed sample per setting (generated tokens only, first 400 characters):", ""]
        for g, e in examples:
            lines += [f"`{g.get('family')}` {g.get('sampler')} {g.get('settings_text', '')}:", "",
                      "```", e.replace("```", "`\u200b``"), "```", ""]
    return lines


def _subjects(meta: dict) -> list[str]:
    out = []
    for fam, s in (meta.get("subjects") or {}).items():
        out.append(f"- {fam}: {'random weights' if s.get('source') == 'random' else s.get('source')} "
                   f"({s.get('model')}, {s.get('params', 0):,} non-embedding parameters"
                   + (f", step {s['step']}" if s.get("step") is not None else "") + ")")
    return out + [f"- {meta.get('backend')} {meta.get('device')}, {meta.get('cpu_count')} cpus; every point: "
                  "one compiled function, compile time apart, warm-up, median of timed calls "
                  "(`block_until_ready`); step/fwd = time per model call / one bare forward of the same "
                  "shape timed between the calls.", ""]


def _figures(bench: dict, out: Path) -> list[str]:
    figs = speed.draw(bench, out)
    parts = []
    if figs["quality_files"]:
        note = figs["quality_note"]
        parts += [f"Quality axis: {note}. Step lines: the Pareto front of each sampler (settings "
                  "that no other setting of the same sampler beats on both axes); crosses: degenerate "
                  "samples (unigram entropy below 80% of held-out text's, which a judge rewards), not "
                  "ranked.", ""]
        parts += [f"![{f}]({f})" for f in figs["quality_files"]] + [""]
    else:
        parts += [f"_Quality vs NFE / latency: not drawn ({figs['quality_note']})._", ""]
    other = [f for f in figs["figures"] if f not in figs["quality_files"]]
    parts += [f"![{f}]({f})" for f in other] + [""]
    for name, fn in (("throughput vs batch", "throughput_vs_batch"),
                     ("latency vs length", "latency_vs_length")):
        if not any(f.endswith(fn + ".png") for f in other):
            parts += [f"_{name}: not drawn (needs points at two or more values of that axis)._", ""]
    return parts


def section(ctx: Context) -> str:
    paths = find_bench_gen(ctx.runs_glob)
    if not paths:
        return gap(HEADING, "No generation benchmark under this pattern: run `python -m sandbox.bench gen` "
                            "(`--ar-run/--mdm-run` for trained models, `--quality` for sample statistics).")
    raw = []  # eval_quality lines, to give quality to benchmark points timed without --quality
    for run in ctx.runs:
        raw += [{**r, "run": str(run)} for r in read_jsonl(Path(run) / "eval_quality.jsonl")]
    parts = [HEADING, ""]
    for bench in speed.pick_benches(paths):
        rows = bench["rows"]
        speed.attach_eval_quality(rows, raw)
        meta = bench["meta"]
        status = "complete" if bench["complete"] else "**interrupted: partial results**"
        parts += [f"### `{bench['dir']}` ({status})", ""]
        if bench.get("others"):
            parts += [f"_{bench['others']} older benchmark folder(s) next to it are not shown._", ""]
        parts += _subjects(meta)
        if not rows:
            parts += ["_No point was measured (the benchmark stopped before its first point)._", ""]
            continue
        refs = {(x.get("family"), x.get("length"), x.get("prompt_len", 0)): x.get("quality")
                for x in bench["reference"]}
        text = format_summary(summarize(rows, refs), rows, bench["skipped"], refs,
                              list(meta.get("random_weights") or []))
        parts += ["```", text.strip(), "```", ""]
        bench["where"] = f"measured here ({meta.get('device') or meta.get('backend')})"
        parts += _figures(bench, ctx.out)
        parts += hardware.section_lines(bench, ctx.out)
        parts += ["#### Samples", ""] + _sample_table(bench) + [""]
        parts += ["#### Every point", ""] + _speed_table(rows) + [""]
        if bench["skipped"]:
            parts += ["Skipped: " + "; ".join(f"{s['label']} {s.get('settings_text', '')} batch {s['batch']} "
                                              f"length {s['length']} ({s['reason']})"
                                              for s in bench["skipped"]), ""]
    return "\n".join(parts) + "\n"
