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
study() {  # category, seeds...
  local category=$1
  shift
  local data=(--config.data.category="$category" --config.data.root=$out/data
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60)
  for s in "$@"; do
    local w=$out/${category}_s$s
    [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
      --workdir "$w" "${data[@]}" --config.train.seed="$s"
    python scripts/score_variant.py "$w" "${w}_mpz" score.method=msfr_pixel
    python scripts/score_variant.py "$w" "${w}_pz" score.method=pixel
    cp "$w/eval/metrics.json" "$records/${category}_s${s}_z.json"
    cp "${w}_mpz/eval/metrics.json" "$records/${category}_s${s}_mpz.json"
    cp "${w}_pz/eval/metrics.json" "$records/${category}_s${s}_pz.json"
  done
  [ -f "$records/${category}_baselines.json" ] || python launch/baselines.py \
    --config configs/demo.py "${data[@]}" --json "$records/${category}_baselines.json"
}
study cast_crack 0 1
study cast 0 1
study part_crack 7
study part 3
# Seeds 2, 3 of part_crack (Z's pastes threshold failed there, twenty-fifth session), trained
# after score.method=auto landed: the run's own evaluation is the new default (`auto`: MPZ).
data=(--config.data.category=part_crack --config.data.root=$out/data
  --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60)
for s in 2 3; do
  w=$out/part_crack_s$s
  [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$w" "${data[@]}" --config.train.seed="$s"
  python scripts/score_variant.py "$w" "${w}_z" score.method=msfr
  python scripts/score_variant.py "$w" "${w}_pz" score.method=pixel
  cp "$w/eval/metrics.json" "$records/part_crack_s${s}_auto.json"
  cp "${w}_z/eval/metrics.json" "$records/part_crack_s${s}_z.json"
  cp "${w}_pz/eval/metrics.json" "$records/part_crack_s${s}_pz.json"
done
