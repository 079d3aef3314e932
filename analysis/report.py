"""Regenerate the comparison report from run folders: ``python -m analysis.report``.

Usage::

    python -m analysis.report runs_glob='runs/demo/*' out=runs/demo

Writes ``<out>/report.md`` and its PNG figures next to it. It reads run folders only and
is idempotent: the same runs give the same report. A missing input leaves a labelled gap
in the report instead of a crash.

Sections (each a function that returns Markdown, so later analyses add a section):
- bits per byte: final held-out figure per run (AR exact; diffusion an upper bound with
  its Monte-Carlo standard error), with steps, tokens and training FLOPs;
- learning curves: held-out bits per byte against training FLOPs and train loss
  against step, one line per run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import final_evals, find_runs, load_metrics  # noqa: E402
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


SECTIONS = [section_bpb, plot_curves]


def build_report(runs_glob: str | list[str], out: str | Path, title: str = "Report") -> Path:
    out = Path(out)
    runs = find_runs(runs_glob)
    if not runs:
        raise UserError(f"runs_glob={runs_glob!r}: no run folders (with metrics.jsonl) match; "
                        "train first or fix the pattern")
    out.mkdir(parents=True, exist_ok=True)
    df = load_metrics(runs)
    parts = [f"# {title}", "", f"Runs: {len(runs)} (from `{runs_glob}`). Regenerate with "
             f"`python -m analysis.report runs_glob='{runs_glob}' out={out}`.", ""]
    for section in SECTIONS:
        try:
            parts.append(section(df, out) if section.__code__.co_argcount == 2 else section(df))
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
