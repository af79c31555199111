#!/usr/bin/env bash
# The aligned part at the demo defaults, MSFR against MSFR + pixel residual (RESULTS.md,
# twenty-fourth session; docs/results/part_pixel/PLAN_part_pixel.md) and the baselines. Resumable: a finished
# run or dump is skipped. Run from the repository root with nothing else on the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
P=python
mkdir -p /tmp/maps
part=(--config.data.category=part --config.data.root=runs/part24/part_data
  --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60)
for s in 0 1; do
  w=runs/part24/part_s$s
  [ -f "$w/eval/metrics.json" ] || $P launch/train.py --config configs/demo.py --workdir "$w" "${part[@]}" --config.train.seed=$s
  [ -f /tmp/maps/part_s$s.pkl ] || $P scripts/map_options.py dump "$w" /tmp/maps/part_s$s.pkl --stride 16
  [ -f /tmp/maps/part_s${s}_pixel.pkl ] || $P scripts/map_options.py dump "$w" /tmp/maps/part_s${s}_pixel.pkl --stride 16 --method pixel
  $P scripts/map_options.py fuse /tmp/maps/part_s${s}_mp.pkl /tmp/maps/part_s$s.pkl /tmp/maps/part_s${s}_pixel.pkl --scale median --combine mean
  for f in part_s$s part_s${s}_pixel part_s${s}_mp; do
    $P scripts/map_options.py analyse /tmp/maps/$f.pkl --sigmas 0 --normalize none --reference mean --types contamination,cut,hole,scratch,spot --quantiles 0.999
  done
done
[ -f runs/part24/baselines.json ] || $P launch/baselines.py --config configs/demo.py "${part[@]}" \
  --json runs/part24/baselines.json
