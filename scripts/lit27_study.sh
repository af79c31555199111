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
msfr=msfr:score.method=msfr,score.reference=none
mpz=mpz:score.method=msfr_pixel,score.reference=zscore
for c in "cast_lit_crack 0" "cast_lit_crack 1" "cast_lit 0" "cast_lit 1"; do
  run $c auto $msfr $mpz
done
for c in cast_lit_crack cast_lit; do baselines $c; done
