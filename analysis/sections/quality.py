"""Sample quality: the ``<run>/eval_quality.jsonl`` lines of ``python -m sandbox.evaluate
eval=quality``, each statistic of the samples next to the same statistic of held-out text of
the same length (gen-perplexity only where a judge scored them).
"""

from __future__ import annotations

from analysis.context import Context
from analysis.formatting import fixed, num
from analysis.labels import settings_text
from analysis.load import load_quality
from analysis.sections import gap

HEADING = "## Sample quality (`python -m sandbox.evaluate eval=quality`)"
# sampler settings shown, in this order (the rest are implementation details of the sampler)
SETTING_KEYS = ("steps", "tau", "block_size", "grid", "temperature", "top_k", "top_p", "use_cache")


def section(ctx: Context) -> str:
    q = load_quality(ctx.runs)
    if q.empty:
        return gap(HEADING, "No sample-quality evaluations in these runs (no `eval_quality.jsonl`): run "
                            "`python -m sandbox.evaluate eval=quality run_dir=<run>`.")
    lines = [HEADING, "",
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
            return f"{fixed(r.get('s_' + m), nd)} ({fixed(r.get('r_' + m), nd)})"
        lines.append(f"| {r['run_name']} | {r.get('objective')} | {r.get('sampler')} | "
                     f"{settings_text(r.get('settings'), SETTING_KEYS)} | {r.get('length')} | "
                     f"{r.get('s_n_samples')} | {fixed(r.get('nfe'), 1)} | {pair('gen_ppl', 2)} | "
                     f"{pair('unigram_entropy')} | {pair('distinct_4')} | "
                     f"{pair('ast_parse_rate_lines', 2)} | "
                     f"{fixed(1e3 * num(r.get('latency_s_per_sample')), 1)} |")
    if q["s_gen_ppl"].isna().all():
        lines += ["", "_gen-ppl: no judge scored these samples; train one with `python -m sandbox.train "
                  "experiment=judge` and rerun the evaluation._"]
    return "\n".join(lines) + "\n"
