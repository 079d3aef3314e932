"""Decoding latency on named hardware: a roofline over the work a benchmark point recorded.

**The model.** ``python -m sandbox.bench gen`` records, for every point, the forwards one call
made (``work.passes``: ``count`` passes of ``batch`` rows computing ``q`` positions against
``kv`` keys; the sampler's ``forward_plan``) with each pass's FLOPs and bytes moved (weights,
keys/values, activations: ``sandbox.core.flops.forward_work``). On hardware ``h`` a pass takes

    t = max(flops / (peak * compute_efficiency) * (1 + rows_half / rows),
            bytes / (bandwidth * memory_efficiency))
        + overhead_forward + n_layers * overhead_layer + logits * draw_s_per_logit

(Williams, Waterman & Patterson 2009, "Roofline"; plus a fixed cost per forward for launches
and the sampling loop, which dominates a small model's decoding step on a GPU), and a call
takes the sum over its passes. ``peak`` is the dtype's (``peak_flops.<dtype>``). Two terms
refine it where a CPU departs from a roofline, both measured rather than assumed:

- **Matmuls of few rows** (``rows``: a pass's ``batch x q``, the row count of its matmuls) reach
  a fraction ``rows / (rows + rows_half)`` of the compute roof (Hockney & Jesshope's
  half-performance length ``n_1/2``): on this CPU an ``[8, d]`` matmul ran at ~1/3 of the rate
  of a ``[128, d]`` one. A one-row pass is exempt: XLA:CPU runs it as a matrix-vector product,
  a separate kernel whose bound is the weight stream (the probe's bandwidth). ``rows_half``
  is fitted with the efficiency on the bare forwards (``[B, L]`` and ``[B, 1]``: rows 1 to
  4096); datasheet hardware sets it to 0 (a plain roofline) until a GPU calibration fits it.
- **The sampler's draw** (``logits``: the logit values it draws from after the pass, ``batch x
  drawn positions x vocabulary``) costs ``draw_s_per_logit`` each: the exact float64 Gumbel
  draw over a whole canvas is ~10-15% of a tiny model's forward on this CPU (measured by the
  probe with the samplers' own function), a few percent on an accelerator.

**Hardware** is described in ``conf/hardware/<name>.yaml`` (datasheet peaks and bandwidths
with their sources; efficiencies and per-kernel costs there are stated assumptions). The CPU
entry is ``measured``: its peak and bandwidth come from the benchmark's ``probe`` row (a
matmul and a weight-sized matvec in the same process) and its compute efficiency and
per-forward cost from a least-squares fit (in log time) over the benchmark's **bare
forwards** (``forward_work`` / ``forward_loop_s``), never over the sampler calls the model is
validated on (:func:`validate`).

**Bad input.** An unknown hardware name lists the available ones; a point without the fields
the model needs (older benchmarks: no ``work``) is skipped with a warning naming it, never
guessed.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import yaml

from analysis.errors import ReportError

HARDWARE_DIR = Path(__file__).resolve().parents[1] / "conf" / "hardware"
TOLERANCE = 0.30          # the validation band: |predicted / measured - 1| <= 30%


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    label: str
    peak_flops: dict | float | None     # FLOP/s per dtype (or one figure)
    bandwidth: float | None             # bytes/s
    compute_efficiency: float | None = 1.0
    memory_efficiency: float = 1.0
    overhead_forward_s: float | None = 0.0
    overhead_layer_s: float = 0.0
    rows_half: float | None = 0.0               # matmul rows at half the compute roof (0: none)
    draw_s_per_logit: float | None = 0.0        # the sampler's exact draw, seconds per logit value
    measured: bool = False
    sources: tuple = ()

    def peak(self, dtype: str) -> float:
        p = self.peak_flops
        if isinstance(p, dict):
            if dtype not in p:
                raise ReportError(f"conf/hardware/{self.name}.yaml: no peak_flops for dtype {dtype} "
                                  f"(has {', '.join(p)})")
            return float(p[dtype])
        return float(p)

    def ready(self) -> bool:
        return None not in (self.peak_flops, self.bandwidth, self.compute_efficiency, self.overhead_forward_s,
                            self.rows_half, self.draw_s_per_logit)


def available() -> list[str]:
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_hardware(name: str, directory: Path | None = None) -> Hardware:
    """``conf/hardware/<name>.yaml``; an unknown name is one line listing the available ones."""
    directory = Path(directory or HARDWARE_DIR)
    path = directory / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ReportError(f"hardware={name}: unknown; available: {', '.join(names) or 'none'} "
                          f"({directory})")
    raw = yaml.safe_load(path.read_text()) or {}
    fields = {f.name for f in dataclasses.fields(Hardware)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ReportError(f"{path}: unknown field(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(fields))}")
    try:  # YAML 1.1 reads 3.35e12 (no dot before e, no sign) as a string: numbers are coerced here
        for k in ("bandwidth", "compute_efficiency", "memory_efficiency", "overhead_forward_s",
                  "overhead_layer_s", "rows_half", "draw_s_per_logit"):
            if raw.get(k) is not None:
                raw[k] = float(raw[k])
        p = raw.get("peak_flops")
        if isinstance(p, dict):
            raw["peak_flops"] = {str(k): float(v) for k, v in p.items()}
        elif p is not None:
            raw["peak_flops"] = float(p)
    except (TypeError, ValueError) as e:
        raise ReportError(f"{path}: a number field is not a number ({e})") from None
    raw.setdefault("name", name)
    raw.setdefault("label", name)
    raw["sources"] = tuple(raw.get("sources") or ())
    return Hardware(**raw)


# --- the arithmetic ---------------------------------------------------------------------------
def _terms(hw: Hardware, flops: float, nbytes: float, n_layers: int, dtype: str, rows: float | None,
           logits: float) -> dict:
    """The four costs of one pass (module doc): compute, memory, fixed overhead, sampling."""
    few_rows = 1.0 + hw.rows_half / rows if rows is not None and rows > 1 and hw.rows_half else 1.0
    return {"compute": flops / (hw.peak(dtype) * hw.compute_efficiency) * few_rows,
            "memory": nbytes / (hw.bandwidth * hw.memory_efficiency),
            "overhead": hw.overhead_forward_s + n_layers * hw.overhead_layer_s,
            "sampling": float(logits) * (hw.draw_s_per_logit or 0.0)}


def pass_time(hw: Hardware, flops: float, nbytes: float, n_layers: int, dtype: str = "float32",
              rows: float | None = None, logits: float = 0.0) -> float:
    """Seconds for one forward pass on ``hw`` (module doc): ``rows`` is the row count of its
    matmuls (None or 1: no few-rows penalty), ``logits`` the logit values drawn from after it."""
    t = _terms(hw, flops, nbytes, n_layers, dtype, rows, logits)
    return max(t["compute"], t["memory"]) + t["overhead"] + t["sampling"]


def bound_of(hw: Hardware, flops: float, nbytes: float, n_layers: int, dtype: str = "float32",
             rows: float | None = None, logits: float = 0.0) -> str:
    """Which term sets a pass's time: ``compute``, ``memory``, ``overhead`` or ``sampling``."""
    t = _terms(hw, flops, nbytes, n_layers, dtype, rows, logits)
    return max(t, key=t.get)


def pass_args(p: dict) -> dict:
    """A recorded pass's keyword arguments to :func:`pass_time` beyond FLOPs and bytes: the row
    count of its matmuls (``batch x q``; None where a pass lacks them: no few-rows term) and the
    logit values drawn after it (``logits``; absent in benchmarks before 2026-12-06: no
    sampling cost)."""
    known = p.get("batch") is not None and p.get("q") is not None
    return {"rows": float(p["batch"]) * float(p["q"]) if known else None,
            "logits": float(p.get("logits") or 0.0)}


def missing_fields(row: dict) -> list[str]:
    work = row.get("work")
    need = []
    if not isinstance(work, dict) or not work.get("passes"):
        need.append("work.passes")
    elif any(k not in p for p in work["passes"] for k in ("count", "flops", "bytes")):
        need.append("work.passes[count, flops, bytes]")
    if isinstance(work, dict) and "n_layers" not in work:
        need.append("work.n_layers")
    if row.get("latency_s") is None:
        need.append("latency_s")
    return need


def usable(rows: list[dict], where: str = "") -> list[dict]:
    """The rows the model can predict; each other one is named in a warning (never guessed)."""
    out = []
    for r in rows:
        miss = missing_fields(r)
        if miss:
            warnings.warn(f"{where}point {r.get('point')} ({r.get('label')} {r.get('settings_text', '')}, "
                          f"batch {r.get('batch')}, length {r.get('length')}): skipped by the roofline "
                          f"model, no {', '.join(miss)} (benchmarked before it was recorded?)", stacklevel=2)
        else:
            out.append(r)
    return out


def predict(row: dict, hw: Hardware) -> float:
    """Predicted seconds for one call of a benchmark point on ``hw``."""
    w = row["work"]
    dtype = str(row.get("dtype") or "float32")
    return sum(p["count"] * pass_time(hw, p["flops"], p["bytes"], w["n_layers"], dtype, **pass_args(p))
               for p in w["passes"])


# --- the measured CPU -------------------------------------------------------------------------
def for_point(hw: Hardware, probe: dict | None, family: str) -> Hardware:
    """``hw`` with its measured peak, bandwidth (the one measured at that family's weight size)
    and draw cost filled in from a benchmark's ``probe`` row. Non-measured hardware as is. A
    probe without the draw cost (benchmarks before 2026-12-06) leaves sampling unmodelled, with
    a warning."""
    if not hw.measured:
        return hw
    if not probe or family not in (probe.get("bandwidth_gbs") or {}):
        raise ReportError(f"hardware={hw.name} is measured, but this benchmark has no probe row for {family} "
                          "(rerun python -m sandbox.bench gen)")
    draw = probe.get("draw_ns_per_logit")
    if draw is None:
        warnings.warn("the benchmark's probe row has no draw_ns_per_logit (benchmarked before the draw was "
                      "measured): the sampler's draw is left out of the prediction", stacklevel=2)
    return dataclasses.replace(hw, peak_flops=float(probe["peak_gflops"]) * 1e9,
                               bandwidth=float(probe["bandwidth_gbs"][family]) * 1e9,
                               draw_s_per_logit=1e-9 * float(draw or 0.0))


def _bare_forwards(hw: Hardware, rows: list[dict], probe: dict | None) -> list[tuple]:
    """``(compute s at the full roof, memory s, matmul rows, measured s)`` per distinct bare
    forward of the rows (one per shape and family, in-loop times: the full forward
    ``forward_loop_s`` over ``forward_shape`` and the one-token forward ``forward1_loop_s``)."""
    seen, obs = set(), []
    for r in rows:
        if "work" not in r:
            continue
        h = for_point(hw, probe, r["family"])
        shape = tuple(r.get("forward_shape") or ())
        full_rows = float(np.prod(shape)) if len(shape) == 2 else None
        for fw, t, key, m in ((r.get("forward_work"), r.get("forward_loop_s") or r.get("forward_s"), shape,
                               full_rows),
                              (r.get("forward1_work"), r.get("forward1_loop_s"), (r.get("batch"), 1),
                               float(r.get("batch") or 1))):
            if not fw or not t or (r.get("family"), key) in seen:
                continue
            seen.add((r.get("family"), key))
            obs.append((fw["flops"] / h.peak(str(r.get("dtype") or "float32")), fw["bytes"] / h.bandwidth,
                        m, t))
    return obs


def calibrate(hw: Hardware, rows: list[dict], probe: dict | None, force: bool = False) -> Hardware:
    """Fill a measured hardware's (or, with ``force``, any hardware's: the GPU calibration of
    ``scripts/gpu_check.sh``) ``compute_efficiency``, ``rows_half`` and ``overhead_forward_s``
    by least squares in log time over the rows' bare forwards (:func:`_bare_forwards`; a bare
    forward draws nothing, so the draw cost is not in them). A grid over efficiency (0.02-1,
    log-spaced), half-performance rows (0 and 0.5-1024) and overhead (0 and 1 us-100 ms):
    small, exact, and no optimiser to fail."""
    if not (hw.measured or force):
        return hw
    if force and not hw.measured:
        hw = dataclasses.replace(hw, overhead_layer_s=0.0)  # one fixed cost per forward, fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                     # a missing draw figure is said at prediction
        obs = _bare_forwards(hw, rows, probe)
    if not obs:
        raise ReportError(f"hardware={hw.name}: no bare forwards with recorded work to calibrate on")
    comp, mem, m, t = (np.array([np.nan if x is None else x for x in col], dtype=np.float64)
                       for col in zip(*obs))
    few = np.where(np.isfinite(m) & (m > 1), 1.0 / np.where(np.isfinite(m), m, 1.0), 0.0)
    effs = np.geomspace(0.02, 1.0, 160)
    halves = np.concatenate([[0.0], np.geomspace(0.5, 1024.0, 80)])
    overheads = np.concatenate([[0.0], np.geomspace(1e-6, 0.1, 200)])
    log_t = np.log(t)
    best = (math.inf, None, None, None)
    for e in effs:
        # [halves, obs]: the pass time without its fixed cost, for every half-performance length
        base = np.maximum(comp[None, :] / e * (1.0 + halves[:, None] * few[None, :]),
                          mem[None, :] / hw.memory_efficiency)
        err = ((np.log(base[:, None, :] + overheads[None, :, None]) - log_t) ** 2).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(err)), err.shape)
        if err[i, j] < best[0]:
            best = (float(err[i, j]), float(e), float(halves[i]), float(overheads[j]))
    return dataclasses.replace(hw, compute_efficiency=best[1], rows_half=best[2], overhead_forward_s=best[3])


def hardware_of(name: str, rows: list[dict], probe: dict | None):
    """``row -> Hardware`` for one hardware name over a benchmark's rows: loaded once,
    calibrated on the rows' bare forwards when measured, filled in per family."""
    hw = calibrate(load_hardware(name), rows, probe)
    return lambda row: for_point(hw, probe, row["family"])


# --- validation and the crossover -------------------------------------------------------------
def validate(rows: list[dict], probe: dict | None, name: str = "cpu", force: bool = False) -> dict:
    """Predicted against measured latency for every usable row. Returns ``{rows: [(row,
    predicted, ratio)], median_abs_err, p80_abs_err, within, n, hardware}`` (``within``: the
    share with |predicted / measured - 1| <= TOLERANCE). ``force``: calibrate any hardware on
    the rows' bare forwards (:func:`calibrate`)."""
    rows = usable(rows)
    hw = load_hardware(name)
    out = []
    if rows:
        hw = calibrate(hw, rows, probe, force=force)
        for r in rows:
            pred = predict(r, for_point(hw, probe, r["family"]))
            out.append((r, pred, pred / r["latency_s"]))
    errs = np.array([abs(x[2] - 1.0) for x in out])
    return {"rows": out, "hardware": hw, "n": len(out),
            "median_abs_err": float(np.median(errs)) if len(errs) else math.nan,
            "p80_abs_err": float(np.percentile(errs, 80)) if len(errs) else math.nan,
            "within": float((errs <= TOLERANCE + 1e-12).mean()) if len(errs) else math.nan}


def step_times(rows: list[dict], hw_of) -> list[dict]:
    """Per diffusion point with an AR KV-cache point of the same batch, length and prompt: the
    time of one of its forwards and of one AR decoding step on a hardware (``hw_of(row) ->
    Hardware``), and ``breakeven`` = their ratio: the tokens a diffusion forward must finalise
    to beat AR. ``tokens_per_forward`` is what the sampler reached."""
    ar = {}
    for r in rows:
        if r.get("family") == "ar" and (r.get("settings") or {}).get("use_cache", True) and r.get("work"):
            passes = r["work"]["passes"]
            if len(passes) >= 2:
                ar[(r["batch"], r["length"], r["prompt_len"])] = (r, passes[-1])
    out = []
    for r in rows:
        if r.get("family") == "ar" or not r.get("work") or not r["work"]["passes"]:
            continue
        a = ar.get((r["batch"], r["length"], r["prompt_len"]))
        if a is None:
            continue
        ar_row, step = a
        hw = hw_of(r)
        dtype = str(r.get("dtype") or "float32")
        n = r["work"]["n_layers"]
        tot = sum(p["count"] for p in r["work"]["passes"])
        t_fwd = predict(r, hw) / tot
        t_ar = pass_time(hw_of(ar_row), step["flops"], step["bytes"], ar_row["work"]["n_layers"], dtype,
                         **pass_args(step))
        big = max(r["work"]["passes"], key=lambda p: p["count"])
        out.append({"row": r, "ar_row": ar_row, "t_forward": t_fwd, "t_ar_step": t_ar,
                    "breakeven": t_fwd / t_ar, "tokens_per_forward": r.get("tokens_per_forward"),
                    "bound": bound_of(hw, big["flops"], big["bytes"], n, dtype, **pass_args(big))})
    return out


def projected_rows(rows: list[dict], hw_of) -> list[dict]:
    """Copies of the rows with every latency field replaced by its prediction on a hardware
    (``hw_of(row)``), so the speed plots can be drawn for it unchanged."""
    out = []
    for r in rows:
        lat = predict(r, hw_of(r))
        gen, nfe = r.get("generated") or r["length"], r.get("nfe") or 1
        out.append({**r, "latency_s": lat, "latency_per_seq_s": lat / r["batch"],
                    "latency_per_token_s": lat / gen, "tokens_per_s": r["batch"] * gen / lat,
                    "time_per_nfe_s": lat / nfe})
    return out


# --- command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``python -m analysis.roofline BENCH [hardware=NAME] [calibrate=true]``: the model's
    prediction for every point of a generation benchmark (a ``gen-*`` folder, its
    ``results.jsonl``, or a folder holding them: the newest) against the measured latency, and
    with ``calibrate=true`` the efficiency and per-forward cost fitted on its bare forwards, as
    lines for ``conf/hardware/NAME.yaml``. Default hardware: the one describing the machine the
    benchmark ran on."""
    import sys

    from analysis.load import find_bench_gen, load_bench_gen
    from analysis.sections.hardware import measured_hardware

    args = sys.argv[1:] if argv is None else argv
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    paths = [a for a in args if "=" not in a]
    unknown = sorted(set(opts) - {"hardware", "calibrate"})
    if unknown or len(paths) != 1:
        raise ReportError("usage: python -m analysis.roofline BENCH_DIR [hardware=NAME] [calibrate=true]"
                          + (f" (unknown option {', '.join(unknown)})" if unknown else ""))
    found = find_bench_gen(paths[0])
    if not found:
        raise ReportError(f"{paths[0]}: no generation benchmark (python -m sandbox.bench gen) there")
    bench = load_bench_gen(sorted(found, key=lambda p: p.parent.name)[-1])
    name = opts.get("hardware") or measured_hardware(bench["meta"])
    if name is None:
        raise ReportError(f"no conf/hardware file describes {bench['meta'].get('device')}; "
                          f"pass hardware=NAME (available: {', '.join(available())})")
    fit = opts.get("calibrate", "false").lower() in ("1", "true", "yes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped points are named once, below
        v = validate(bench["rows"], bench.get("probe"), name, force=fit)
    usable(bench["rows"], where=f"{bench['dir']}: ")
    hw = v["hardware"]
    if fit:
        print(f"# fitted on the bare forwards of {bench['dir']} ({name}):")
        print(f"compute_efficiency: {hw.compute_efficiency:.3f}\nrows_half: {hw.rows_half:.3g}\n"
              f"overhead_forward_s: {hw.overhead_forward_s:.3g}\noverhead_layer_s: 0.0")
    print(f"\n{'point':>5} {'sampler':<20} {'settings':<28} {'B':>3} {'L':>5} {'measured ms':>12} "
          f"{'predicted ms':>13} {'ratio':>6}  bound")
    for r, pred, ratio in v["rows"]:
        h = for_point(hw, bench.get("probe"), r["family"])
        big = max(r["work"]["passes"], key=lambda p: p["count"])
        bound = bound_of(h, big["flops"], big["bytes"], r["work"]["n_layers"],
                         str(r.get("dtype") or "float32"), **pass_args(big))
        print(f"{r.get('point', ''):>5} {r['label']:<20} {str(r.get('settings_text', ''))[:28]:<28} "
              f"{r['batch']:>3} {r['length']:>5} {1e3 * r['latency_s']:>12,.2f} {1e3 * pred:>13,.2f} "
              f"{ratio:>6.2f}  {bound}")
    if v["n"]:
        print(f"\n{name}: {v['n']} points, median error {100 * v['median_abs_err']:.0f}%, 80th percentile "
              f"{100 * v['p80_abs_err']:.0f}%, {100 * v['within']:.0f}% within +-30%")


if __name__ == "__main__":
    from analysis.errors import exit_on_report_error

    exit_on_report_error(main)()
