"""Where a train step's time goes: a per-operation profile of the trainer's compiled step.

``python -m sandbox.bench train --profile`` runs, after a point is timed, a few more steps
of the same compiled step under ``jax.profiler`` and writes, into the results folder:

- ``profile-<model>-<objective>.md``: a table of the step's time by **phase** (forward,
  backward, optimizer: the AdamW update, gradient clipping and norm, EMA) and by **kind**
  (attention, matmul, normalisation, softmax / cross-entropy, elementwise, copies and
  layout changes), then the most expensive operations with the source line they come from;
- ``profile-<model>-<objective>.jsonl``: one row per compiled operation (name, phase, kind,
  milliseconds per step, calls, the JAX primitive and source frame);
- the profiler's trace (``trace/plugins/profile/<time>/*.trace.json.gz``), which Perfetto
  (ui.perfetto.dev) and TensorBoard's profile plugin open.

How an operation is classified: XLA:CPU records one trace event per executed HLO
instruction (a fusion, a dot, a copy ...), named as in the compiled module. The compiled
module's text gives, for each instruction, its JAX primitive path (``op_name``:
``jit(step_fn)/jvp()/dot_general``; ``transpose(jvp())`` marks the backward pass) and
the Python call stack that produced it (``stack_frame_id`` into the module's stack-frame
table). The phase comes from the primitive path; the kind from the innermost sandbox
function on the stack (``attention.py`` -> attention, ``RMSNorm`` -> normalisation,
``token_nll`` / ``log_softmax`` -> softmax / cross-entropy), then from the instruction
itself (a dot -> matmul; copy, transpose, concatenate, slice -> layout; the rest ->
elementwise). Times are summed over the profiled steps and divided by their number;
operations that run on several threads at once can make the sum exceed the step's wall
time, which the table reports beside it.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

import jax

PHASES = ("forward", "backward", "optimizer")
KINDS = ("attention", "matmul", "normalisation", "softmax/xent", "elementwise", "layout")

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\{?.*? (\w[\w\-]*)\(")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_META = re.compile(r'metadata=\{op_name="([^"]*)"(?: source_file="[^"]*")?(?: source_line=\d+)?'
                   r'(?: stack_frame_id=(\d+))?')
_LAYOUT_OPS = ("copy", "transpose", "concatenate", "slice", "dynamic-slice", "dynamic-update-slice", "pad",
               "bitcast", "reshape", "broadcast", "gather", "scatter")
_LAYOUT_PRIMS = ("transpose", "concatenate", "slice", "dynamic_slice", "dynamic_update_slice", "pad",
                 "reshape", "broadcast_in_dim", "copy", "gather", "scatter", "squeeze", "expand_dims")


# --- the compiled module: op_name and call stack of every instruction -------------------------------
def _tables(text: str) -> tuple[dict, dict, dict, dict]:
    """(file names, function names, file locations, stack frames) of an HLO module's text."""
    sections = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    current = None
    for line in text.splitlines():
        s = line.strip()
        if s in sections:
            current = sections[s]
            continue
        if current is None:
            continue
        m = re.match(r"^(\d+) (.*)$", s)
        if m is None:  # a section ends at its first line that is not "<id> <value>"
            current = None
            continue
        current[int(m.group(1))] = m.group(2)
    files = {k: v.strip('"') for k, v in sections["FileNames"].items()}
    funcs = {k: v.strip('"') for k, v in sections["FunctionNames"].items()}

    def fields(v):
        return {a: int(b) for a, b in re.findall(r"(\w+)=(\d+)", v)}

    locs = {k: fields(v) for k, v in sections["FileLocations"].items()}
    frames = {k: fields(v) for k, v in sections["StackFrames"].items()}
    return files, funcs, locs, frames


def _stack(frame_id: int | None, files, funcs, locs, frames) -> list[tuple[str, str, int]]:
    """Innermost-first (file, function, line) of a stack frame id."""
    out, seen = [], set()
    while frame_id and frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        f = frames[frame_id]
        loc = locs.get(f.get("file_location_id", 0), {})
        file = files.get(loc.get("file_name_id", 0), "?")
        out.append((file, funcs.get(loc.get("function_name_id", 0), "?"), loc.get("line", 0)))
        parent = f.get("parent_frame_id")
        frame_id = parent if parent != frame_id else None
    return out


def instructions(hlo_text: str) -> dict[str, dict]:
    """name -> {opcode, op_name, stack} for every instruction of the compiled module."""
    tables = _tables(hlo_text)
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(3)
        meta = _META.search(line)
        op_name = meta.group(1) if meta else ""
        frame = int(meta.group(2)) if meta and meta.group(2) else None
        target = _TARGET.search(line)
        out[name] = {"opcode": opcode, "op_name": op_name, "stack": _stack(frame, *tables),
                     "target": target.group(1) if target else "",
                     "custom": "__ynn_fusion" in line or "__onednn" in line or "kind=kCustom" in line}
    return out


def phase_of(op_name: str) -> str:
    """forward (inside the loss's jvp), backward (its transpose) or optimizer (the rest of the
    step: the update, clipping, the gradient norm and the EMA)."""
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer"


def kind_of(info: dict) -> str:
    """One of KINDS (module doc)."""
    target = info.get("target", "")  # the CPU kernels' custom calls (sandbox.models.cpu_kernels)
    if target.startswith("sandbox_attention"):
        return "attention"
    if target.startswith("sandbox_matmul"):
        return "matmul"
    for file, func, _ in info["stack"]:  # innermost first: the most specific sandbox function
        if "/sandbox/" not in file:
            continue
        if file.endswith("models/attention.py") or func.startswith("Attention."):
            return "attention"
        if "RMSNorm" in func or "rms_norm" in func:
            return "normalisation"
        if func.endswith(("token_nll", "log_softmax")) or "suppress" in func:
            return "softmax/xent"
        break
    prim = info["op_name"].rsplit("/", 1)[-1]
    if info["opcode"] == "dot" or prim == "dot_general" or (info["custom"] and "dot" in prim):
        return "matmul"
    in_objective = any("/objectives/" in f for f, _, _ in info["stack"])
    if prim in ("log_softmax", "logsumexp", "reduce_max") and in_objective:
        return "softmax/xent"
    if info["opcode"] in _LAYOUT_OPS or prim in _LAYOUT_PRIMS:
        return "layout"
    return "elementwise"


# --- the trace -------------------------------------------------------------------------------------
def trace_times(trace_dir: Path) -> dict[str, tuple[float, int]]:
    """name -> (total microseconds, calls) of the complete events of the newest trace."""
    files = sorted(glob.glob(str(Path(trace_dir) / "**" / "*.trace.json.gz"), recursive=True))
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {trace_dir}")
    data = json.load(gzip.open(files[-1]))
    events = data["traceEvents"] if isinstance(data, dict) else data
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            out[e["name"]][0] += float(e["dur"])
            out[e["name"]][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def profile_rows(hlo_text: str, times: dict, steps: int) -> list[dict]:
    """One row per executed instruction of the module: its time per step and its class."""
    instr = instructions(hlo_text)
    rows = []
    for name, info in instr.items():
        if name not in times:
            continue
        us, calls = times[name]
        top = next(((f, fn, ln) for f, fn, ln in info["stack"] if "/sandbox/" in f), None)
        rows.append({"op": name, "phase": phase_of(info["op_name"]), "kind": kind_of(info),
                     "ms": us / 1e3 / steps, "calls": calls // max(steps, 1), "primitive": info["op_name"],
                     "source": f"{top[0].split('/sandbox/')[-1]}:{top[2]} {top[1]}" if top else ""})
    return sorted(rows, key=lambda r: -r["ms"])


def table(rows: list[dict], step_ms: float, title: str, top: int = 15) -> str:
    """The Markdown report: phase x kind, then the most expensive operations."""
    total = sum(r["ms"] for r in rows) or 1.0
    grid = defaultdict(float)
    for r in rows:
        grid[(r["phase"], r["kind"])] += r["ms"]
    lines = [f"# {title}", "",
             f"Wall time per step {step_ms:.1f} ms (median of the profiled steps); operations sum to "
             f"{total:.1f} ms per step.", "",
             "| kind | " + " | ".join(PHASES) + " | total | share |", "|---|" + "---:|" * (len(PHASES) + 2)]
    for k in KINDS:
        vals = [grid[(p, k)] for p in PHASES]
        lines.append(f"| {k} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {sum(vals):.1f} | "
                     f"{sum(vals) / total:.0%} |")
    vals = [sum(grid[(p, k)] for k in KINDS) for p in PHASES]
    lines += ["| **all** | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {total:.1f} | 100% |", "",
              "Most expensive operations (ms per step):", "",
              "| op | phase | kind | ms | primitive | source |", "|---|---|---|---:|---|---|"]
    for r in rows[:top]:
        lines.append(f"| `{r['op']}` | {r['phase']} | {r['kind']} | {r['ms']:.2f} | "
                     f"`{r['primitive'].split('/', 1)[-1]}` | {r['source']} |")
    return "\n".join(lines) + "\n"


def profile_step(compiled, state, inputs, out_dir: Path, name: str, steps: int = 3) -> dict:
    """Run ``compiled`` (the trainer's step, already warm) ``steps`` times under the profiler;
    write the table, the rows and the trace into ``out_dir``. Returns {"table", "rows",
    "step_ms", "trace"}; the state it returns is not kept (the step donates its input)."""
    out_dir = Path(out_dir)
    trace_dir = out_dir / f"trace-{name}"
    shutil.rmtree(trace_dir, ignore_errors=True)
    walls = []
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    try:
        for i in range(steps):
            batch, key = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            state, m = compiled(state, batch, key)
            jax.block_until_ready((state, m))
            walls.append(time.perf_counter() - t0)
    finally:
        jax.profiler.stop_trace()
    rows = profile_rows(compiled.as_text(), trace_times(trace_dir), steps)
    step_ms = 1e3 * sorted(walls)[len(walls) // 2]
    text = table(rows, step_ms, f"Profile of the train step: {name}")
    (out_dir / f"profile-{name}.md").write_text(text)
    (out_dir / f"profile-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"table": text, "rows": rows, "step_ms": step_ms, "trace": str(trace_dir)}
