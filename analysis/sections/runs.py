"""Runs: how many run folders were read and every flagged one (unfinished, no recorded bound,
unreadable), which the fits and the headline leave out.
"""

from __future__ import annotations

from analysis.context import Context
from analysis.sections import gap

HEADING = "## Runs"


def section(ctx: Context) -> str:
    table = ctx.table
    if table.empty:
        return gap(HEADING, "No run folders.")
    last = table[table["final"]]
    n_ok = int((last["finished"] & last["known_objective"]).sum())
    head = (f"{HEADING}\n\n{len(last)} run folders; {n_ok} finished runs of a known objective (a recorded "
            "bound) enter the tables and fits above.")
    flagged = last[last["problems"] != ""]
    if flagged.empty:
        return head + "\n\nNo run is flagged.\n"
    lines = [head + " Flagged runs (left out of the fits and the headline):", "",
             "| run folder | objective | size | step | problem |", "|---|---|---|---:|---|"]
    for _, r in flagged.iterrows():
        step = "–" if r["step"] != r["step"] else int(r["step"])
        lines.append(f"| `{r['run_name']}` | {r['objective']} | {r['size']} | {step} | {r['problems']} |")
    return "\n".join(lines) + "\n"
