#!/usr/bin/env bash
# Issue 15's CPU table in one command, on a quiet machine (nothing else on the cores):
#
#   bash scripts/cpu_pair_bench.sh [OUT_DIR]
#   SITTINGS=3 bash scripts/cpu_pair_bench.sh [OUT_DIR]   # three sittings, then their range
#
# PyTorch reference, cmaae_jax, PyTorch again at batch 512, then the same at batch 64, each
# `--warmup 3 --steps 5` and ten timed MSFR images (the median of ten: the map's times vary
# by ~10% from call to call), one JSON per run in OUT_DIR (default runs/cpu_pair_bench), then
# the side-by-side table (launch/bench_report.py). Where tcmalloc is installed (Debian's
# libtcmalloc-minimal4), cmaae_jax preloads it as every launch script does, and the reference
# runs once more per batch with it preloaded (the launchers' tcmalloc settings), reported on
# a line of its own: like for like. TORCH_PYTHON is a Python with torch 2.13 and numpy
# (BENCHMARKS.md: python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install
# torch==2.13.0 numpy); PYTHON the project's. With SITTINGS=N (N > 1) the whole sequence runs
# N times, into OUT_DIR/sitting1 ... sittingN, and the report ends with every sitting's ratios,
# their range and how many sittings met each target (the reference's step moves by 5-10%
# between sittings: one sitting does not decide a ratio near its bound).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/cpu_pair_bench}"
TORCH_PYTHON="${TORCH_PYTHON:-/tmp/torch-venv/bin/python}"
PY="${PYTHON:-python}"
IMAGES=10
TCMALLOC=$("$PY" -c 'import ctypes.util; print(ctypes.util.find_library("tcmalloc_minimal") or "")')
# the launchers' tcmalloc settings, from their one owner (cmaae_jax/devices.py)
read -r -a TCMALLOC_SETTINGS <<< "$("$PY" -c 'from cmaae_jax import devices
print(" ".join(f"{k}={v}" for k, v in devices.ALLOCATOR_SETTINGS.items()))')"

torch_run() {  # torch_run DIR BATCH NAME [ENV...]
  local dir=$1 batch=$2 name=$3
  shift 3
  env "$@" "$TORCH_PYTHON" ../shared/bench/torch_reference.py --batch "$batch" --warmup 3 \
    --steps 5 --infer-images "$IMAGES" --json "$dir/$name.json" > "$dir/$name.log" 2>&1
}

record_allocator() {  # record_allocator FILE.json: the reference's JSON does not say which
  # malloc it ran on; recorded here for the report
  "$PY" - "$1" "$TCMALLOC" <<'PYEOF'
import json, sys
path, library = sys.argv[1], sys.argv[2]
with open(path) as fh:
    run = json.load(fh)
run["host_allocator"] = library
with open(path, "w") as fh:
    json.dump(run, fh, indent=1)
PYEOF
}

one_sitting() {  # one_sitting DIR: torch, cmaae_jax, torch at each batch; the table
  local dir=$1
  mkdir -p "$dir"
  cat /proc/loadavg
  for batch in 512 64; do
    torch_run "$dir" "$batch" "torch_b${batch}_1"
    "$PY" launch/benchmark.py --batch "$batch" --warmup 3 --steps 5 --infer-images "$IMAGES" \
      --json "$dir/jax_b${batch}.json" > "$dir/jax_b${batch}.log" 2>&1
    torch_run "$dir" "$batch" "torch_b${batch}_2"
    if [ -n "$TCMALLOC" ]; then
      torch_run "$dir" "$batch" "torch_b${batch}_tcmalloc" LD_PRELOAD="$TCMALLOC" "${TCMALLOC_SETTINGS[@]}"
      record_allocator "$dir/torch_b${batch}_tcmalloc.json"
    fi
  done
  "$PY" launch/bench_report.py "$dir"/*.json | tee "$dir/table.md"
}

SITTINGS="${SITTINGS:-1}"
if [ "$SITTINGS" -le 1 ]; then
  one_sitting "$OUT"
  exit 0
fi
folders=()
for i in $(seq 1 "$SITTINGS"); do
  one_sitting "$OUT/sitting$i"
  folders+=("$OUT/sitting$i")
done
"$PY" launch/bench_report.py "${folders[@]}" | tee "$OUT/sittings.md"
