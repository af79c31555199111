#!/usr/bin/env bash
# The issue-12 study on magnetic tile (RESULTS.md, third session), resumable across sessions:
# the finished runs' records (study.json, eval/metrics.json) are kept in docs/results/study12
# and copied into the workdir first, so finished rows are skipped and only the rest train.
# Run from the repository root after `pip install -e '.[test]'`; one row is ~20 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=runs/study12
mkdir -p "$root"
cp -rn docs/results/study12/. "$root"/
python launch/baselines.py --config configs/study.py --json "$root/baselines.json"
python launch/study.py --config configs/study.py --workdir_root "$root" \
  --variants full,ae_pixel,ae,paper,full_grid,pixel,full_fine,ae_fine --seeds 0 --picture_variants=
python launch/study.py --config configs/study.py --workdir_root "$root" \
  --variants full,ae_pixel,ae,full_fine,ae_fine --seeds 1 --picture_variants=
# the budget curve of the defaults (issue 12 item 6): full_l1 / ae_l1 are full_fine / ae_fine
# trained as rows of their own (their records at scale 1 are copies of those, the same models)
python launch/study.py --config configs/study.py --workdir_root "$root" \
  --variants full_l1@0.25,ae_l1@0.25,full_l1@0.5,ae_l1@0.5,full_l1@2,ae_l1@2,full_l1@4,ae_l1@4 \
  --seeds 0 --picture_variants=
# single-option rows (one seed): learning-rate schedule, memory temperature, paste, squash
python launch/study.py --config configs/study.py --workdir_root "$root" \
  --variants cosine_fine,ae_cosine_fine,tau01,blob,square,scaled --seeds 0 --picture_variants=
