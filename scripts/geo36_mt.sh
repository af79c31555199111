#!/usr/bin/env bash
# docs/results/geo36/PLAN.md, the magnetic tile part: fresh seeds 5 and 6 of
# configs/magnetic_tile.py with today's defaults, each scored again with
# eval.threshold_rule=geomean into <run>_geo; then the per-type label-free F1 of both rules.
#
#   bash scripts/geo36_mt.sh
#
# Resumable: a finished run or scoring is skipped, an interrupted run resumes from its last
# checkpoint. Run from the repository root with nothing else on the cores.
# Records: docs/results/geo36/ (mt_s5.json, mt_s5_geo.json, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/geo36
records=docs/results/geo36
mkdir -p "$out" "$records"
for s in 5 6; do
  name=mt_s$s
  [ -f "$out/$name/eval/metrics.json" ] || python launch/train.py \
    --config configs/magnetic_tile.py --workdir "$out/$name" --config.eval.max_pictures=4 \
    --config.train.seed=$s
  cp "$out/$name/eval/metrics.json" "$records/$name.json"
  [ -f "$records/${name}_geo.json" ] || {
    python scripts/score_variant.py "$out/$name" "$out/${name}_geo" eval.threshold_rule=geomean
    cp "$out/${name}_geo/eval/metrics.json" "$records/${name}_geo.json"
  }
done
python scripts/records_table.py mt_s5=$records/mt_s5.json mt_s5_geo=$records/mt_s5_geo.json \
  mt_s6=$records/mt_s6.json mt_s6_geo=$records/mt_s6_geo.json
