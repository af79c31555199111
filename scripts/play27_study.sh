#!/usr/bin/env bash
# Plan 8 (docs/results/play27/PLAN_play27.md): aligned images in a loose fixture. Fresh runs of
# cast_play_crack and cast_play, each scored by the default (`auto`), by MSFR with no
# reference (`msfr`) and by msfr_pixel with the z-scored reference forced (`mpz`). Resumable.
# Run from the repository root with nothing else on the cores; records go to
# docs/results/play27/records/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/play27
records=docs/results/play27/records
source scripts/study_runs.sh
for c in "cast_play_crack 0" "cast_play_crack 1" "cast_play 0"; do
  run $c auto $msfr $mpz
done
