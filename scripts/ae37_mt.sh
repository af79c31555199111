#!/usr/bin/env bash
# docs/results/ae37/PLAN.md: the plain auto-encoder (model.variant=ae) on magnetic tile's
# config with today's defaults, seeds 5 and 6 (the geo36 plan's CMA-AE seeds, so the pairs
# share their seed), scored as evaluation's defaults give it and again by its pixel residual
# (score.method=pixel, issue 12's comparison); then both against CMA-AE's records and the
# non-learned baselines (launch/baselines.py, same data and evaluation).
#
#   bash scripts/ae37_mt.sh
#
# Resumable: a finished run or scoring is skipped, an interrupted run resumes from its last
# checkpoint. Run from the repository root with nothing else on the cores (~50 min a seed).
# Records: docs/results/ae37/ (ae_s5.json, ae_s5_pixel.json, ..., baselines.json).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/ae37
records=docs/results/ae37
mkdir -p "$out" "$records"
for s in 5 6; do
  name=ae_s$s
  [ -f "$out/$name/eval/metrics.json" ] || python launch/train.py \
    --config configs/magnetic_tile.py --workdir "$out/$name" --config.eval.max_pictures=4 \
    --config.train.seed=$s --config.model.variant=ae
  cp "$out/$name/eval/metrics.json" "$records/$name.json"
  [ -f "$records/${name}_pixel.json" ] || {
    python scripts/score_variant.py "$out/$name" "$out/${name}_pixel" score.method=pixel
    cp "$out/${name}_pixel/eval/metrics.json" "$records/${name}_pixel.json"
  }
done
[ -f "$records/baselines.json" ] || {
  python launch/baselines.py --config configs/magnetic_tile.py --json "$out/baselines.json"
  cp "$out/baselines.json" "$records/baselines.json"
}
geo=docs/results/geo36
base=$records/baselines.json
python scripts/records_table.py cmaae_s5=$geo/mt_s5.json ae_s5=$records/ae_s5.json \
  ae_s5_pixel=$records/ae_s5_pixel.json cmaae_s6=$geo/mt_s6.json ae_s6=$records/ae_s6.json \
  ae_s6_pixel=$records/ae_s6_pixel.json "local_contrast_s8=$base#local_contrast_s8" \
  "local_contrast_s2=$base#local_contrast_s2" "mean_image=$base#mean_image"
