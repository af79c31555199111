#!/usr/bin/env bash
# Issue 15's CPU table in one command, on a quiet machine (nothing else on the cores):
#
#   bash scripts/cpu_pair_bench.sh [OUT_DIR]
#
# PyTorch reference, cmaae_jax, PyTorch again at batch 512, then the same at batch 64, each
# `--warmup 3 --steps 5` and ten timed MSFR images (the median of ten: the map's times vary
# by ~10% from call to call), one JSON per run in OUT_DIR (default runs/cpu_pair_bench), then
# the side-by-side table (launch/bench_report.py). Where tcmalloc is installed (Debian's
# libtcmalloc-minimal4), cmaae_jax preloads it as every launch script does, and the reference
# runs once more per batch with it preloaded (the launchers' tcmalloc settings), reported on
# a line of its own: like for like. TORCH_PYTHON is a Python with torch 2.13 and numpy
# (BENCHMARKS.md: python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install
# torch==2.13.0 numpy); PYTHON the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/cpu_pair_bench}"
TORCH_PYTHON="${TORCH_PYTHON:-/tmp/torch-venv/bin/python}"
PY="${PYTHON:-python}"
IMAGES=10
mkdir -p "$OUT"
cat /proc/loadavg
TCMALLOC=$("$PY" -c 'import ctypes.util; print(ctypes.util.find_library("tcmalloc_minimal") or "")')
# the launchers' tcmalloc settings, from their one owner (cmaae_jax/devices.py)
read -r -a TCMALLOC_SETTINGS <<< "$("$PY" -c 'from cmaae_jax import devices
print(" ".join(f"{k}={v}" for k, v in devices.ALLOCATOR_SETTINGS.items()))')"

torch_run() {  # torch_run BATCH NAME [ENV...]
  local batch=$1 name=$2
  shift 2
  env "$@" "$TORCH_PYTHON" ../shared/bench/torch_reference.py --batch "$batch" --warmup 3 \
    --steps 5 --infer-images "$IMAGES" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
}

for batch in 512 64; do
  torch_run "$batch" "torch_b${batch}_1"
  "$PY" launch/benchmark.py --batch "$batch" --warmup 3 --steps 5 --infer-images "$IMAGES" \
    --json "$OUT/jax_b${batch}.json" > "$OUT/jax_b${batch}.log" 2>&1
  torch_run "$batch" "torch_b${batch}_2"
  if [ -n "$TCMALLOC" ]; then
    torch_run "$batch" "torch_b${batch}_tcmalloc" LD_PRELOAD="$TCMALLOC" "${TCMALLOC_SETTINGS[@]}"
    # The reference's JSON does not say which malloc it ran on: recorded here for the report.
    "$PY" - "$OUT/torch_b${batch}_tcmalloc.json" "$TCMALLOC" <<'PYEOF'
import json, sys
path, library = sys.argv[1], sys.argv[2]
with open(path) as fh:
    run = json.load(fh)
run["host_allocator"] = library
with open(path, "w") as fh:
    json.dump(run, fh, indent=1)
PYEOF
  fi
done
"$PY" launch/bench_report.py "$OUT"/*.json | tee "$OUT/table.md"
