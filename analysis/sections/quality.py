"""Sample quality: the ``<run>/eval_quality.jsonl`` lines of ``python -m sandbox.evaluate
eval=quality``, each statistic of the samples next to the same statistic of held-out text of
the same length (judge bits per byte only where the pretrained judge scored them,
gen-perplexity only where an in-sandbox judge did), and the generative frontier: judge
bits per byte against unigram entropy over the temperatures evaluated
(``temperatures=[...]``), one line per run and sampler, held-out text as a star
(``quality_frontier.png``). A judge rewards repetitive text; the entropy axis shows it.
"""

from __future__ import annotations

from analysis.context import Context
from analysis.formatting import fixed, num
from analysis.labels import settings_text
from analysis.load import load_quality
from analysis.plotting import finish_axes, label_colors, plt, save_figure
from analysis.sections import gap

FRONTIER = "quality_frontier.png"

HEADING = "## Sample quality (`python -m sandbox.evaluate eval=quality`)"
# sampler settings shown, in this order (the rest are implementation details of the sampler)
SETTING_KEYS = ("steps", "tau", "block_size", "grid", "temperature", "top_k", "top_p", "use_cache")


def _curve_key(r) -> str:
    """One frontier line: the run and its sampler settings other than the temperature."""
    st = dict(r.get("settings") or {}) if isinstance(r.get("settings"), dict) else {}
    st.pop("temperature", None)
    keys = tuple(k for k in SETTING_KEYS if k != "temperature")
    return f"{r['run_name']} {r.get('sampler')} {settings_text(st, keys)}".strip()


def plot_frontier(q, out) -> str | None:
    """Judge bits per byte against unigram entropy, one line per run and sampler over its
    temperatures, held-out text as stars; None without judged lines."""
    q = q[q["s_judge_bpb"].notna()] if "s_judge_bpb" in q else q.iloc[0:0]
    if q.empty:
        return None
    q = q.assign(curve=[_curve_key(r) for _, r in q.iterrows()])
    colors = label_colors(sorted(q["curve"].unique()))
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, g in q.groupby("curve"):
        g = g.sort_values("s_unigram_entropy")
        ax.plot(g["s_unigram_entropy"], g["s_judge_bpb"], marker="o", ms=4, color=colors[name], label=name)
        for _, r in g.iterrows():
            t = r.get("temperature")
            if t is not None and t == t:
                ax.annotate(f"T={t:g}", (r["s_unigram_entropy"], r["s_judge_bpb"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
    refs = q.dropna(subset=["r_judge_bpb", "r_unigram_entropy"]).drop_duplicates(["run", "length"])
    for i, (_, r) in enumerate(refs.iterrows()):
        ax.scatter([r["r_unigram_entropy"]], [r["r_judge_bpb"]], marker="*", s=120, color="black",
                   label="held-out text" if i == 0 else None, zorder=3)
    ax.set(xlabel="unigram entropy of a sample (bits; real text: the star)",
           ylabel="judge bits per byte, SmolLM2-135M (lower is better)",
           title="Generative frontier over sampling temperature")
    finish_axes(ax)
    return save_figure(fig, out, FRONTIER)


def section(ctx: Context) -> str:
    q = load_quality(ctx.runs)
    if q.empty:
        return gap(HEADING, "No sample-quality evaluations in these runs (no `eval_quality.jsonl`): run "
                            "`python -m sandbox.evaluate eval=quality run_dir=<run>`.")
    lines = [HEADING, "",
             "Each statistic of the samples next to the same statistic of held-out text of the same "
             "length (`real`). judge bpb: bits per byte under SmolLM2-135M, a pretrained judge no "
             "model here trained (`judge=smollm2`; lower is better, but read it with the entropy: "
             "low-entropy repetitive samples score well). gen-ppl: perplexity under the in-sandbox AR "
             "judge trained on a disjoint split. JSD-2: Jensen-Shannon divergence (bits) of the "
             "samples' bigrams to held-out text's (`real`: another held-out set's, the floor of finite "
             "samples). copied: share of 32-byte spans found verbatim in the training split. "
             "`–`: not computed (no judge; parse rates only for code).", "",
             "| run | objective | sampler | settings | length | n | NFE | judge bpb (real) | gen-ppl (real) "
             "| entropy (real) | distinct-4 (real) | JSD-2 (floor) | copied (real) | parses, block (real) "
             "| ms/sample |",
             "|---|---|---|---|---:|---:|---:|---|---|---|---|---|---|---|---:|"]
    for _, r in q.iterrows():
        def pair(m, nd=3, r=r):
            return f"{fixed(r.get('s_' + m), nd)} ({fixed(r.get('r_' + m), nd)})"
        lines.append(f"| {r['run_name']} | {r.get('objective')} | {r.get('sampler')} | "
                     f"{settings_text(r.get('settings'), SETTING_KEYS)} | {r.get('length')} | "
                     f"{r.get('s_n_samples')} | {fixed(r.get('nfe'), 1)} | {pair('judge_bpb', 2)} | "
                     f"{pair('gen_ppl', 2)} | {pair('unigram_entropy')} | {pair('distinct_4')} | "
                     f"{pair('jsd_2')} | {pair('copied_32')} | {pair('ast_parse_rate_lines', 2)} | "
                     f"{fixed(1e3 * num(r.get('latency_s_per_sample')), 1)} |")
    if q["s_judge_bpb"].isna().all():
        lines += ["", "_judge bpb: the pretrained judge scored none of these samples; `make judge`, then "
                  "rerun the evaluation with `judge=smollm2`._"]
    fig = plot_frontier(q, ctx.out)
    if fig:
        lines += ["", "Generative frontier: judge bits per byte against unigram entropy, over the sampling "
                  "temperatures evaluated (`temperatures=[...]`); the star is held-out text. Down is better "
                  "text, and only near the star's entropy is a low score not repetition.", "",
                  f"![{fig}]({fig})"]
    else:
        lines += ["", "_Generative frontier: not drawn (no evaluation judged by the pretrained judge; run "
                  "`python -m sandbox.evaluate eval=quality judge=smollm2 'temperatures=[0.8,1.0,1.2]'`)._"]
    return "\n".join(lines) + "\n"
