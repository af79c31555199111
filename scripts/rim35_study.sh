#!/usr/bin/env bash
# The rim plan's fresh runs (docs/results/mt34/PLAN_rim.md): the demo (wood, seeds 1 and 2),
# the aligned proxy cast_crack (demo budget, seeds 15 and 16), magnetic tile (seeds 2, 3, 4),
# each trained and evaluated with today's defaults (image score `top`).
#
#   bash scripts/rim35_study.sh
#
# Resumable: a finished run is skipped, an interrupted one resumes from its last checkpoint.
# Run from the repository root with nothing else on the cores. Records: docs/results/rim35/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/rim35
records=docs/results/rim35
mkdir -p "$out" "$records"
train() {  # workdir config [flags]
  [ -f "$1/eval/metrics.json" ] || python launch/train.py --config "$2" --workdir "$1" \
    --config.eval.max_pictures=4 "${@:3}"
  cp "$1/eval/metrics.json" "$records/$(basename "$1").json"
}
for s in 1 2; do
  train $out/demo_s$s configs/demo.py --config.train.seed=$s
done
for s in 15 16; do
  train $out/cast_crack_s$s configs/demo.py --config.data.category=cast_crack \
    --config.data.root=runs/aligned26/data --config.data.synthetic_num_train=100 \
    --config.data.synthetic_num_test=60 --config.train.seed=$s
done
for s in 2 3 4; do
  train $out/mt_s$s configs/magnetic_tile.py --config.train.seed=$s
done
