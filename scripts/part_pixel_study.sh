#!/usr/bin/env bash
# The aligned part at the demo defaults, MSFR against MSFR + pixel residual, and the
# baselines (RESULTS.md, twenty-fourth session; docs/results/part_pixel/PLAN_part_pixel.md).
# Resumable: a finished run or dump is skipped. Run from the repository root with nothing
# else on the cores; the analyses are printed (docs/results/part_pixel/analysis.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
maps=/tmp/maps
mkdir -p "$maps"
part=(--config.data.category=part --config.data.root=runs/part24/part_data
  --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60)
for s in 0 1; do
  w=runs/part24/part_s$s
  m=$maps/part_s$s
  [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$w" "${part[@]}" --config.train.seed=$s
  [ -f "$m.pkl" ] || python scripts/map_options.py dump "$w" "$m.pkl" --stride 16
  [ -f "${m}_pixel.pkl" ] || python scripts/map_options.py dump "$w" "${m}_pixel.pkl" \
    --stride 16 --method pixel
  python scripts/map_options.py fuse "${m}_mp.pkl" "$m.pkl" "${m}_pixel.pkl" \
    --scale median --combine mean
  for f in "$m" "${m}_pixel" "${m}_mp"; do
    python scripts/map_options.py analyse "$f.pkl" --sigmas 0 --normalize none \
      --reference mean --types contamination,cut,hole,scratch,spot --quantiles 0.999
  done
done
[ -f runs/part24/baselines.json ] || python launch/baselines.py --config configs/demo.py \
  "${part[@]}" --json runs/part24/baselines.json
