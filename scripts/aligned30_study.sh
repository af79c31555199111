#!/usr/bin/env bash
# Thirtieth session's plans 2 and 3 (docs/results/aligned30/PLAN.md): fresh aligned runs
# (demo budget) and their MSFR / pixel map dumps for scripts/aligned_fusions.py.
#
#   bash scripts/aligned30_study.sh          # plan 2; dumps in runs/aligned30/maps/
#   bash scripts/aligned30_study.sh plan3    # plan 3; dumps in runs/aligned30/maps3/
#   bash scripts/aligned30_study.sh plan4    # thirty-first session's plan 4: trains all
#       eight first, then evaluates them (the library's default); no dumps
#   bash scripts/aligned30_study.sh plan6    # thirty-second session's plan 6: as plan 4,
#       eight more fresh seeds
#   bash scripts/aligned30_study.sh plan7    # plan 7: as plan 4, eight more fresh seeds
#   bash scripts/aligned30_study.sh plan8    # thirty-third session's plan 8: six fresh seeds,
#       trained, evaluated and dumped (maps8/), and the two wide runs of runs/wide33 dumped
#
# Resumable: a finished run or dump is skipped (an interrupted run resumes from its last
# checkpoint; delete a dump cut off mid-write). Run from the repository root with nothing
# else on the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
plan=${1:-plan2}
out=runs/aligned30
case "$plan" in
  plan2) maps=$out/maps
    runs="lit27:cast_lit_crack:3 aligned26:cast_crack:4 aligned26:part_crack:4 lit27:cast_lit:2
          aligned26:cast:3 lit27:cast_lit_crack:4 aligned26:cast_crack:5 aligned26:part:5" ;;
  plan3) maps=$out/maps3
    runs="lit27:cast_lit_crack:5 aligned26:cast_crack:6 aligned26:part_crack:5 lit27:cast_lit:3
          aligned26:cast:4 lit27:cast_lit_crack:6 aligned26:cast_crack:7 aligned26:part:6" ;;
  plan4) maps=""
    runs="lit27:cast_lit_crack:7 aligned26:cast_crack:8 aligned26:part_crack:8 lit27:cast_lit:4
          aligned26:cast:5 lit27:cast_lit_crack:8 aligned26:cast_crack:9 aligned26:part:7" ;;
  plan6) maps=""
    runs="lit27:cast_lit_crack:9 aligned26:cast_crack:10 aligned26:part_crack:9 lit27:cast_lit:5
          aligned26:cast:6 lit27:cast_lit_crack:10 aligned26:cast_crack:11 aligned26:part:8" ;;
  plan7) maps=""
    runs="lit27:cast_lit_crack:11 aligned26:cast_crack:12 aligned26:part_crack:10 lit27:cast_lit:6
          aligned26:cast:7 lit27:cast_lit_crack:12 aligned26:cast_crack:13 aligned26:part:9" ;;
  plan8) maps=$out/maps8
    runs="lit27:cast_lit_crack:13 aligned26:cast_crack:14 aligned26:part_crack:11 lit27:cast_lit:7
          lit27:cast_lit_crack:14 aligned26:part:10" ;;
  *) echo "unknown plan $plan: plan2 | plan3 | plan4 | plan6 | plan7 | plan8" >&2; exit 2 ;;
esac
train() {  # workdir category data seed [flags]
  python launch/train.py --config configs/demo.py --workdir "$1" --config.data.category="$2" \
    --config.data.root="runs/$3/data" --config.data.synthetic_num_train=100 \
    --config.data.synthetic_num_test=60 --config.train.seed="$4" --config.eval.max_pictures=4 \
    "${@:5}"
}
if [ -z "$maps" ]; then  # plans 4, 6 and 7: train every run, then evaluate every run
  for r in $runs; do
    IFS=: read -r data category seed <<< "$r"
    w=$out/${category}_s$seed
    [ -d "$w/checkpoints/600" ] || train "$w" "$category" "$data" "$seed" --noevaluate
  done
  for r in $runs; do
    IFS=: read -r data category seed <<< "$r"
    w=$out/${category}_s$seed
    [ -f "$w/eval/metrics.json" ] || python launch/evaluate.py --workdir "$w"
  done
  exit 0
fi
mkdir -p "$maps"
for r in $runs; do
  IFS=: read -r data category seed <<< "$r"
  w=$out/${category}_s$seed
  [ -f "$w/eval/metrics.json" ] || train "$w" "$category" "$data" "$seed"
  [ -f "$maps/${category}_s$seed.pkl" ] || \
    python scripts/aligned_fusions.py dump "$w" "$maps/${category}_s$seed.pkl"
done
if [ "$plan" = plan8 ]; then  # the wide runs (scripts/wide33_study.sh trains them)
  for s in 0 1; do
    [ -f "$maps/wide_cast_crack_s$s.pkl" ] || python scripts/aligned_fusions.py dump \
      "runs/wide33/cast_crack_s$s" "$maps/wide_cast_crack_s$s.pkl"
  done
fi
