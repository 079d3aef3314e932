"""Decoding speed in both worlds: measured on this machine, projected on accelerators.

For one generation benchmark (``python -m sandbox.bench gen``): the roofline model of
:mod:`analysis.roofline` validated against the measured latencies of the machine the benchmark
ran on (the CPU: measured peak, bandwidth and draw cost; efficiency, few-rows penalty and
per-forward cost fitted on the bare forwards only), the speed figures redrawn with latencies
projected on an NVIDIA H200, and a table of the **break-even tokens per forward**: how many
tokens a diffusion forward must finalise for the sampler to match AR with a KV cache at the
same batch and length, per hardware, beside the tokens per forward the sampler reached.
Latency ratios diffusion/AR per hardware follow from the same predictions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from analysis import roofline, speed
from analysis.errors import ReportError
from analysis.formatting import fixed

PROJECTED = "h200"                               # the accelerator the figures are redrawn for
TABLE_HARDWARE = ("cpu", "h100", "h200", "tpu_v5e")


def measured_hardware(meta: dict) -> str | None:
    """The hardware file that describes the machine a benchmark ran on, if any."""
    if meta.get("backend") == "cpu":
        return "cpu"
    device = str(meta.get("device") or "").lower().replace(" ", "")
    return next((n for n in roofline.available() if n != "cpu" and n.replace("_", "") in device), None)


def _validation(bench: dict, rows: list[dict]) -> list[str]:
    name = measured_hardware(bench["meta"])
    if name is None:
        return [f"_Roofline validation: no `conf/hardware/*.yaml` describes "
                f"{bench['meta'].get('device')}._", ""]
    try:
        v = roofline.validate(rows, bench.get("probe"), name)
    except ReportError as e:  # e.g. a measured CPU without its probe row: said, not guessed
        return [f"_Roofline validation: {e}._", ""]
    if not v["n"]:
        return ["_Roofline validation: no point records the work the model needs._", ""]
    hw = v["hardware"]
    lines = []
    if hw.measured:
        p = bench["probe"]
        bws = ", ".join(f"{f} {b:,.1f} GB/s" for f, b in (p.get("bandwidth_gbs") or {}).items())
        draw = p.get("draw_ns_per_logit")
        drawn = (f", the exact draw {draw:,.1f} ns per logit value" if draw is not None
                 else " (no draw cost in this benchmark's probe: sampling left out)")
        lines += [f"Roofline on {hw.label}: matmul peak {p['peak_gflops']:,.0f} GFLOP/s, weight-streaming "
                  f"bandwidth ({bws}){drawn} measured by the benchmark; compute efficiency "
                  f"{hw.compute_efficiency:.2f}, half the compute roof at {hw.rows_half:.3g} matmul rows and "
                  f"{1e3 * hw.overhead_forward_s:.3f} ms per forward fitted on its bare forwards only."]
    fams = sorted({r.get("family") for r, _, _ in v["rows"]})
    by = []
    for f in fams:
        errs = sorted(abs(x - 1) for r, _, x in v["rows"] if r.get("family") == f)
        within = sum(e <= roofline.TOLERANCE + 1e-12 for e in errs)
        by.append(f"{f} {within}/{len(errs)}")
    ok = v["within"] >= 0.8
    lines += [f"Predicted vs measured call latency over {v['n']} points: "
              f"median error {100 * v['median_abs_err']:.0f}%, "
              f"80th percentile {100 * v['p80_abs_err']:.0f}%, {100 * v['within']:.0f}% within ±30% "
              f"({'; '.join(by)}) — {'meets' if ok else 'misses'} the target of 80% within ±30%.", ""]
    worst = sorted(v["rows"], key=lambda x: -abs(x[2] - 1))[:3]
    if worst and abs(worst[0][2] - 1) > roofline.TOLERANCE:
        lines += ["Largest misses: " + "; ".join(
            f"{r['label']} {r.get('settings_text', '')} B{r['batch']} L{r['length']}: predicted "
            f"{1e3 * pred:,.1f} ms, measured {1e3 * r['latency_s']:,.1f} ms"
            for r, pred, _ in worst) + ".", ""]
    return lines


def _breakeven_table(rows: list[dict], probe: dict | None) -> list[str]:
    hws = {}
    for name in TABLE_HARDWARE:
        try:
            hws[name] = roofline.hardware_of(name, rows, probe)
        except ReportError as e:  # e.g. a measured CPU without a probe row: named, not guessed
            warnings.warn(str(e), stacklevel=2)
    tables = {n: {id(x["row"]): x for x in roofline.step_times(rows, f)} for n, f in hws.items()}
    if not hws or not any(tables.values()):
        return ["_Break-even table: needs a diffusion point and an AR KV-cache point of the same batch, "
                "length and prompt, both with recorded work._", ""]
    first = next(t for t in tables.values() if t)
    names = [n for n in hws if tables[n]]
    ar_measured = {}
    for r in rows:
        if r.get("family") == "ar" and (r.get("settings") or {}).get("use_cache", True):
            ar_measured[(r["batch"], r["length"], r["prompt_len"])] = r["latency_s"] / max(r["nfe"], 1)
    lines = ["Break-even tokens per forward (a diffusion forward's time over one AR KV-cache step's, so the "
             "sampler beats AR where it finalises more tokens per forward than this; AR's prefill ignored) "
             "and the call-latency ratio diffusion/AR, measured here and predicted per hardware:", "",
             "| sampler | settings | B | L | tok/fwd reached | measured here | "
             + " | ".join(f"{n} (roofline)" for n in names) + " |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(names)]
    for rid, x in first.items():
        r, ar = x["row"], x["ar_row"]
        t_ar = ar_measured.get((r["batch"], r["length"], r["prompt_len"]))
        meas = (f"{(r['latency_s'] / max(r['nfe'], 1)) / t_ar:,.1f} ({r['latency_s'] / ar['latency_s']:.2f}x)"
                if t_ar else "–")
        cells = []
        for n in names:
            y = tables[n].get(rid)
            if y is None:
                cells.append("–")
                continue
            ratio = roofline.predict(r, hws[n](r)) / roofline.predict(ar, hws[n](ar))
            cells.append(f"{y['breakeven']:,.1f} ({ratio:.2f}x, {y['bound']})")
        lines.append(f"| {r['label']} | {r.get('settings_text', '')} | {r['batch']} | {r['length']} | "
                     f"{fixed(r.get('tokens_per_forward'), 2)} | {meas} | " + " | ".join(cells) + " |")
    return lines + ["", "Cells: break-even tokens per forward (diffusion/AR call latency, what bounds the "
                    "diffusion forward on that hardware). Projections use datasheet peaks and assumed "
                    "efficiencies and launch costs (`conf/hardware/*.yaml`, sources there); the CPU column "
                    "is the model validated above.", ""]


def _projected_figures(bench: dict, rows: list[dict], out: Path) -> list[str]:
    try:
        hw_of = roofline.hardware_of(PROJECTED, rows, bench.get("probe"))
    except ReportError as e:
        return [f"_Projected figures: {e}_", ""]
    name = hw_of(rows[0]).label.replace(" (projected)", "")
    proj = {**bench, "rows": roofline.projected_rows(rows, hw_of),
            "where": f"projected on {name} (roofline, not measured)"}
    figs = speed.draw(proj, out, prefix=f"{speed.slug(bench)}_{PROJECTED}",
                      plots=(speed.plot_throughput, speed.plot_latency_length))
    files = []
    for f in figs["figures"]:
        if f.endswith("quality_vs_nfe.png"):  # no time in it: the measured figure already shows it
            (Path(out) / f).unlink(missing_ok=True)
        else:
            files.append(f)
    if not files:
        return []
    return ([f"The same points with latencies **projected on {name}** by the roofline model "
             "(quality and NFE unchanged; only time is projected):", ""]
            + [f"![{f}]({f})" for f in files] + [""])


def section_lines(bench: dict, out: Path) -> list[str]:
    """The lines of the '#### Both worlds' part for one benchmark."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = roofline.usable(bench["rows"], where=f"{bench['dir']}: ")
    skipped = [str(w.message) for w in caught]
    lines = ["#### Both worlds: measured here, projected on accelerators", ""]
    if skipped:
        lines += [f"_{len(skipped)} point(s) skipped by the roofline model (no recorded work; first: "
                  f"{skipped[0]})._", ""]
    if not rows:
        return lines + ["_No point records the work per forward (`work` in results.jsonl): rerun "
                        "`python -m sandbox.bench gen` to project this benchmark._", ""]
    lines += _validation(bench, rows)
    lines += _breakeven_table(rows, bench.get("probe"))
    lines += _projected_figures(bench, rows, out)
    return lines

