#!/usr/bin/env bash
# Issue 15's CPU table in one command, on a quiet machine (nothing else on the cores):
#
#   bash scripts/cpu_pair_bench.sh [OUT_DIR]
#
# PyTorch reference, cmaae_jax, PyTorch again at batch 512, then the same at batch 64, each
# `--warmup 3 --steps 5`, one JSON per run in OUT_DIR (default runs/cpu_pair_bench), then the
# side-by-side table (launch/bench_report.py). TORCH_PYTHON is a Python with torch 2.13 and
# numpy (BENCHMARKS.md: python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install
# torch==2.13.0 numpy); PYTHON the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/cpu_pair_bench}"
TORCH_PYTHON="${TORCH_PYTHON:-/tmp/torch-venv/bin/python}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
cat /proc/loadavg
for batch in 512 64; do
  "$TORCH_PYTHON" ../shared/bench/torch_reference.py --batch "$batch" --warmup 3 --steps 5 \
    --json "$OUT/torch_b${batch}_1.json" > "$OUT/torch_b${batch}_1.log" 2>&1
  "$PY" launch/benchmark.py --batch "$batch" --warmup 3 --steps 5 \
    --json "$OUT/jax_b${batch}.json" > "$OUT/jax_b${batch}.log" 2>&1
  "$TORCH_PYTHON" ../shared/bench/torch_reference.py --batch "$batch" --warmup 3 --steps 5 \
    --json "$OUT/torch_b${batch}_2.json" > "$OUT/torch_b${batch}_2.log" 2>&1
done
"$PY" launch/bench_report.py "$OUT"/*.json | tee "$OUT/table.md"
