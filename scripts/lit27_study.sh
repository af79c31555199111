#!/usr/bin/env bash
# Plan 7 (docs/results/lit27/PLAN_lit27.md): aligned images under light that drifts. Fresh
# runs of cast_lit_crack and cast_lit, each scored by the default (`auto`), by MSFR with no
# reference (`msfr`) and by msfr_pixel with the z-scored reference forced (`mpz`). Resumable.
# Run from the repository root with nothing else on the cores; records go to
# docs/results/lit27/records/ (table: scripts/records_table.py --pooled).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/lit27
records=docs/results/lit27/records
source scripts/study_runs.sh
for c in "cast_lit_crack 0" "cast_lit_crack 1" "cast_lit 0" "cast_lit 1"; do
  run $c auto $msfr $mpz
done
for c in cast_lit_crack cast_lit; do baselines $c; done
# Plan 7's addendum: a fresh unlit cast_crack run and the demo's wood beside the drifting runs,
# then the alignment test's narrowing on plain and gain-free MSFR maps (normal images only).
run cast_crack 3 auto
[ -f "$out/demo/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
  --workdir "$out/demo"
python scripts/alignment_narrowing.py "$out"/cast_lit_crack_s{0,1} "$out"/cast_lit_s{0,1} \
  "$out/cast_crack_s3" "$out/demo" --out docs/results/lit27/narrowing.json
