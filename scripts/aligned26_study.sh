#!/usr/bin/env bash
# Plan 5 (docs/results/aligned26/PLAN_aligned26.md): Z, MPZ and PZ on fresh aligned runs,
# the rough cast surface among them. Resumable: a finished run, scoring or baseline file is
# skipped. Run from the repository root with nothing else on the cores. Records are copied to
# docs/results/aligned26/records/; the table: scripts/records_table.py --pooled (RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/aligned26
records=docs/results/aligned26/records
mkdir -p "$records"
run() {  # category, seed, label of the run's own evaluation, variant=score.method ...
  local category=$1 s=$2 own=$3
  shift 3
  local w=$out/${category}_s$s
  [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$w" --config.data.category="$category" --config.data.root=$out/data \
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60 \
    --config.train.seed="$s"
  cp "$w/eval/metrics.json" "$records/${category}_s${s}_$own.json"
  for v in "$@"; do
    python scripts/score_variant.py "$w" "${w}_${v%%=*}" "score.method=${v#*=}"
    cp "${w}_${v%%=*}/eval/metrics.json" "$records/${category}_s${s}_${v%%=*}.json"
  done
}
baselines() {  # category
  [ -f "$records/$1_baselines.json" ] || python launch/baselines.py --config configs/demo.py \
    --config.data.category="$1" --config.data.root=$out/data \
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60 \
    --json "$records/$1_baselines.json"
}
# Trained before score.method=auto landed: the run's own evaluation is Z.
for c in "cast_crack 0" "cast_crack 1" "cast 0" "cast 1" "part_crack 7" "part 3"; do
  run $c z mpz=msfr_pixel pz=pixel
done
for c in cast_crack cast part_crack part; do baselines $c; done
# Seeds 2, 3 of part_crack (Z's pastes threshold failed there, twenty-fifth session), trained
# after score.method=auto landed: the run's own evaluation is the new default (`auto`: MPZ).
run part_crack 2 auto z=msfr pz=pixel
run part_crack 3 auto z=msfr pz=pixel
# After the build, fresh seeds of each family with the new default against Z (no decision).
run cast_crack 2 auto z=msfr
run cast 2 auto z=msfr
run part 4 auto z=msfr
