#!/usr/bin/env bash
# Plan 9 (docs/results/margin27/PLAN_margin27.md): what a false "aligned" costs unaligned
# textures (carpet, tile, the demo's wood scored with the aligned map forced), and fresh
# aligned runs with nuisance (cast_lit_crack s2). Resumable; run after scripts/lit27_study.sh
# (the demo's run) with nothing else on the cores; records go to docs/results/margin27/records/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/margin27
records=docs/results/margin27/records
source scripts/study_runs.sh
run carpet 0 auto $mpz
run tile 0 auto $mpz
run cast_lit_crack 2 auto $mpz
wood=runs/lit27/demo
python scripts/score_variant.py "$wood" "${wood}_mpz" score.method=msfr_pixel score.reference=zscore
cp "$wood/eval/metrics.json" "$records/wood_demo_s0_auto.json"
cp "${wood}_mpz/eval/metrics.json" "$records/wood_demo_s0_mpz.json"
