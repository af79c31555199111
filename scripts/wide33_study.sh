#!/usr/bin/env bash
# The aligned path on wide, padded images (docs/results/wide33/PLAN.md): synthetic cast_crack
# at 640 px cropped to 230 x 640, two fresh models at the demo budget, baselines.
# Resumable: finished data, runs and baselines are skipped. Run from the repository root with
# nothing else on the cores. Records: docs/results/wide33/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/wide33
records=docs/results/wide33
mkdir -p "$records"
[ -d $out/square/cast_crack ] || python -c "
from cmaae_jax import synthetic
synthetic.write_mvtec_tree('$out/square', 'cast_crack', 100, 60, 0, 640)"
[ -d $out/data/cast_crack ] || python scripts/crop_rows.py $out/square/cast_crack \
  $out/data/cast_crack --top 205 --height 230
data=(--config.data.format=mvtec --config.data.root=$out/data --config.data.category=cast_crack
      --config.data.image_size=640 --config.anomaly.patch_size=256)
for s in 0 1; do
  w=$out/cast_crack_s$s
  [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$w" "${data[@]}" --config.train.seed=$s --config.eval.max_pictures=4
  cp "$w/eval/metrics.json" "$records/cast_crack_s$s.json"
done
[ -f "$records/baselines.json" ] || python launch/baselines.py --config configs/demo.py \
  "${data[@]}" --json "$records/baselines.json"
