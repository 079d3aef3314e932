"""Held-out bits per byte: the last evaluation of every run, with steps, tokens, training FLOPs
and the bound each run recorded (exact, or an upper bound with its Monte-Carlo standard error).

Reads the raw records (``ctx.metrics``) rather than the tidy table so that every run with an
evaluation appears, finished or not, known bound or not.
"""

from __future__ import annotations

from analysis.context import Context
from analysis.formatting import fixed
from analysis.labels import bound_sentence
from analysis.load import final_evals
from analysis.sections import gap

HEADING = "## Held-out bits per byte"


def section(ctx: Context) -> str:
    df = ctx.metrics
    ev = final_evals(df)
    if ev.empty:
        return gap(HEADING, "No evaluation records found in these runs.")
    bounds = {o: b for o, b in ctx.bounds.items() if b}
    lines = [HEADING, "",
             bound_sentence(bounds) + " Lower is better. Evaluated with EMA weights on the validation "
             "split.", "",
             "| run | objective | model | step | tokens | train FLOPs | val bits/byte | ± s.e. | bound |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for _, r in ev.iterrows():
        bound = r.get("bound")
        lines.append(f"| {r['run_name']} | {r.get('objective')} | {r.get('model')} | {int(r['step'])} | "
                     f"{int(r['tokens']):,} | {float(r['flops']):.3g} | {fixed(r.get('val_bpb'), 4)} | "
                     f"{fixed(r.get('val_bpb_stderr'), 4)} | {bound if isinstance(bound, str) else '–'} |")
    if "true_bpb" in df and df["true_bpb"].notna().any():
        for v in sorted(df["true_bpb"].dropna().unique()):
            lines += ["", f"True entropy rate of the synthetic corpus (computed from the grammar): "
                      f"**{v:.4f} bits per byte**; the gap to it is the models' excess loss."]
    return "\n".join(lines) + "\n"
