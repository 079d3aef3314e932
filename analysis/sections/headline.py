"""Headline: perplexity ratio per byte of each objective against the exact-likelihood reference
at matched training FLOPs, per budget and setting, next to published ratios at far larger scale.

The numbers come from :mod:`analysis.fits` (frontier, interpolation, ratio); this module only
lays them out. The published ratios stay even when nothing here can be computed: they are the
context the sandbox's own ratio is read against.
"""

from __future__ import annotations

import pandas as pd

from analysis.context import Context
from analysis.fits import (
    budget_points,
    fit_all,
    frontier,
    grouped,
    headline,
    objectives_in,
    same_size_ratios,
    settings_of,
)
from analysis.formatting import fixed, join_labels, ratio_range, sig
from analysis.labels import bounds_of, reference_objective

HEADING = "## Headline: diffusion vs AR perplexity at matched training FLOPs"

# Published diffusion / AR perplexity ratios, at far larger scale than this sandbox's runs.
REFERENCES = (
    ("MDLM vs AR", "OpenWebText (GPT-2 tokens, 262B tokens)", 1.32,
     "Sahoo et al. 2024 (MDLM), Table 2: AR 17.54 vs MDLM <= 23.21 test perplexity"),
    ("MDLM vs AR", "LM1B (33B tokens)", 1.21,
     "Sahoo et al. 2024 (MDLM), Table 1: AR 22.32 vs MDLM <= 27.04"),
    ("BD3LM (block 4) vs AR", "OpenWebText", 1.18,
     "Arriola et al. 2025 (BD3LM), Table 3: AR 17.54 vs BD3LM L'=4 <= 20.73"),
    ("MD4 vs AR", "text8 (bits per character)", 1.11,
     "Shi et al. 2024 (MD4), Table 1: 2^(MD4 <= 1.37 bpc - AR 1.23 bpc)"),
)


def _text(ctx: Context) -> str:
    return ("Perplexity ratio **per byte**, `2^(bpb_other - bpb_reference)`, of the compute-optimal size "
            "of each objective at each budget (the lowest seed-mean held-out bits per byte among the "
            "sizes trained) against the reference, the first objective with an exact likelihood "
            "(`analysis/fits.py` says how the reference is matched when budgets differ). With the "
            "byte tokenizer this is also the per-token ratio. " + ctx.bound_note + " Brackets: ±2 "
            "standard errors (seed spread, or the Monte-Carlo error of the bound for a single seed). "
            "Only runs given `train.flop_budget` and trained on the train split count.")


def section(ctx: Context) -> str:
    pts = budget_points(ctx.table)
    refs = ["Published ratios, for context only: they come from models and data far larger than "
            "these runs (hundreds of millions of parameters, billions of tokens), on other corpora "
            "and tokenizers.", "",
            "| comparison | data | perplexity ratio | source |", "|---|---|---:|---|"]
    refs += [f"| {c} | {d} | ~{r:.2f} | {s} |" for c, d, r, s in REFERENCES]
    heads, sizes = [], []
    for setting in settings_of(pts):
        p = pts[pts["setting"] == setting]
        ref = reference_objective(bounds_of(p))
        if ref is None or not (p["objective"] != ref).any():
            continue
        groups = grouped(p)
        front = frontier(groups)
        heads.append(headline(p, front, fit_all(p, front), ref).assign(setting=setting))
        sizes.append(same_size_ratios(groups, ref).assign(setting=setting))
    if not heads:
        have = "; ".join(f"{st}: {join_labels(objectives_in(pts[pts['setting'] == st]))}"
                         for st in settings_of(pts)) or "none"
        return (f"{HEADING}\n\n_Not computed: needs finished runs of an exact-likelihood objective (AR) and "
                "of another objective given a training-FLOP budget (`train.flop_budget`) in the same "
                f"setting (finished ones here: {have})._\n\n" + "\n".join(refs) + "\n")
    h, ss = pd.concat(heads, ignore_index=True), pd.concat(sizes, ignore_index=True)
    many = len(settings_of(pts)) > 1
    sc, sh = ("{setting} | ", "setting | ") if many else ("", "")
    lines = [HEADING, "", _text(ctx), ""]
    if h.empty:
        lines += ["_No budget could be matched with the reference._", ""]
    else:
        lines += [f"| {sh}budget (FLOPs) | objective | size | bits/byte | reference | reference size | "
                  "reference bits/byte | reference matched by | Δ bits/byte | ppl ratio [±2 s.e.] |",
                  "|" + "---|" * many + "---:|---|---|---:|---|---|---:|---|---:|---|"]
        for _, r in h.iterrows():
            lines.append(f"| {sc.format(setting=r['setting'])}{sig(r['budget'])} | {r['objective']} | "
                         f"{r['size']} | {fixed(r['bpb'])} ± {fixed(r['bpb_se'])} | {r['reference']} | "
                         f"{r['ref_size']} | {fixed(r['ref_bpb'])} | {r['ref_how']} | {fixed(r['delta'])} | "
                         f"{ratio_range(r, bold=True)} |")
        lines.append("")
    lines += refs
    if not ss.empty:
        lines += ["", "<details><summary>Every size: each objective vs the reference of the same size and "
                  "budget</summary>", "",
                  f"| {sh}budget (FLOPs) | size | objective | bits/byte | reference | reference bits/byte | "
                  "ppl ratio [±2 s.e.] |",
                  "|" + "---|" * many + "---:|---|---|---:|---|---:|---|"]
        for _, r in ss.iterrows():
            lines.append(f"| {sc.format(setting=r['setting'])}{sig(r['budget'])} | {r['size']} | "
                         f"{r['objective']} | {fixed(r['bpb'])} | {r['reference']} | {fixed(r['ref_bpb'])} | "
                         f"{ratio_range(r)} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
