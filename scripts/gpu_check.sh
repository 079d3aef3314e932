#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU (after `pip install -e '.[cuda]'`), run one
# training step per objective, every sampler once, the training and generation speed
# benchmarks at one point each, the roofline latency model against the measured points (and
# its calibration for this GPU), and the report with its figures, all into one folder:
#
#   scripts/gpu_check.sh [OUT]        # or: make gpu-check   (OUT: runs/gpu_check/<time>)
#
# Prints the figures at the end and writes them to OUT/summary.txt. Without a GPU it stops
# at once with one `error:` line and exit status 1. GPU_CHECK_ALLOW_CPU=1 runs the same
# steps on the CPU (only to test this script; the figures then mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/gpu_check/$(date +%Y%m%d-%H%M%S)}

fail() { echo "error: $*" >&2; exit 1; }
[ -x "$PY" ] || command -v "$PY" >/dev/null || fail "no Python at $PY; run make setup (or set PYTHON=...)"
if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    || fail "no NVIDIA GPU on this machine (nvidia-smi finds none); run scripts/gpu_check.sh on a GPU machine"
  backend=$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null) || backend="(jax failed to start)"
  [ "$backend" = gpu ] \
    || fail "JAX does not see the GPU (backend: $backend); pip install -e '.[cuda]' and unset JAX_PLATFORMS"
fi

mkdir -p "$OUT"
echo "gpu check -> $OUT"
{ nvidia-smi 2>/dev/null || echo "(no nvidia-smi)"; } > "$OUT/nvidia-smi.txt"
"$PY" -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())' > "$OUT/devices.txt"
cat "$OUT/devices.txt"

step() { echo; echo "== $*"; }

# 1. one training step per objective (smoke settings; a checkpoint the samplers read)
for obj in ar mdlm; do
  step "train 1 step: objective=$obj"
  "$PY" -m sandbox.train experiment=smoke "objective=$obj" train.steps=1 train.eval_every=1 \
    train.ckpt_every=1 train.progress=false "hydra.run.dir=$OUT/$obj"
done

# 2. every sampler once, from the run of its objective family
for s in ar mdm_ancestral mdm_first_hitting mdm_topk_confidence mdm_threshold; do
  run=$OUT/mdlm; [ "$s" = ar ] && run=$OUT/ar
  step "sample: sampler=$s"
  "$PY" -m sandbox.sample "run_dir=$run" "sampler=$s" num_samples=8 batch_size=8 progress=false
done

# 3. speed at one point: training (tiny, batch 32 x 256) and generation (length 128)
step "bench train: tiny, ar + mdlm, batch 32, seq 256"
"$PY" -m sandbox.bench train --models tiny --objectives ar,mdlm --no-nnx --steps 10 --out "$OUT/bench"
step "bench gen: length 128, batch 1 and 32 (--demo point)"
"$PY" -m sandbox.bench gen --demo --out "$OUT/bench"

# 3b. the roofline latency model against this GPU's measured points (conf/hardware/<gpu>.yaml:
# datasheet peaks, assumed efficiencies), then the efficiency and per-forward cost fitted on this
# benchmark's bare forwards: the lines to put in that file once a GPU has been seen
step "roofline: predicted vs measured generation latency (and the calibration)"
"$PY" -m analysis.roofline "$OUT/bench" 2>&1 | tee "$OUT/roofline.txt" || true
"$PY" -m analysis.roofline "$OUT/bench" calibrate=true 2>&1 | tee "$OUT/roofline_calibrated.txt" || true

# 4. report and figures
step "report"
"$PY" -m analysis.report "runs_glob=$OUT/*" "out=$OUT" "title=GPU check"

# 5. the figures, in one place
"$PY" - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, json, sys
from pathlib import Path
out = Path(sys.argv[1])
dev = (out / "devices.txt").read_text().strip()
print(f"\nGPU check ({dev})")
for obj in ("ar", "mdlm"):
    recs = [json.loads(x) for x in (out / obj / "metrics.jsonl").read_text().splitlines()]
    c = next(r for r in recs if r["kind"] == "compile")
    print(f"  train {obj}: first step (compile + run) {c['first_step_s']:.1f} s")
for path in sorted(glob.glob(str(out / "bench" / "train-*" / "results.jsonl"))):
    for r in map(json.loads, Path(path).read_text().splitlines()):
        if r.get("kind") == "train":
            print(f"  bench train {r['model']}/{r['objective']} batch {r['batch']} x {r['seq']}: "
                  f"{r['tokens_per_s']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, MFU {r['mfu']:.1%}")
for path in sorted(glob.glob(str(out / "bench" / "gen-*" / "results.jsonl"))):
    for r in map(json.loads, Path(path).read_text().splitlines()):
        if r.get("kind") == "gen" and r.get("batch") == 1:
            print(f"  bench gen {r['label']} ({r['settings_text']}), length {r['length']}, batch 1: "
                  f"{1e3 * r['latency_per_seq_s']:.1f} ms/sequence, NFE {r['nfe']:g}")
for name in ("roofline.txt", "roofline_calibrated.txt"):
    lines = (out / name).read_text().strip().splitlines() if (out / name).exists() else []
    last = [x for x in lines if "within" in x or x.startswith("error")]
    print(f"  {name}: {last[-1] if last else '(not run)'}")
samples = sorted(p.name for p in out.glob("*/samples/*.jsonl"))
print(f"  samples: {len(samples)} files; report: {out / 'report.md'}")
PY
