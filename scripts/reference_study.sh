#!/usr/bin/env bash
# score.reference (RESULTS.md, fifth session), resumable: each finished step leaves a file and
# is skipped when the script runs again. Run from the repository root after
# `pip install -e '.[test]'`, with nothing else on the cores.
#  1. the aligned synthetic part (synthetic family `part`), demo budget, seeds 0 and 1: trained
#     and evaluated with score.reference=auto, then again with none and mean (windows every
#     32 pixels, the defaults then), and with auto and none at stride 16;
#     the non-learned baselines on the same data;
#  2. magnetic tile (not aligned, images of many sizes, so auto = none): the study's full_l1
#     model, seed 0, evaluated with none and mean at stride 32 and none at 16 (train it
#     first: launch/train.py --config configs/study.py --workdir runs/reference/mt_full_s0
#     --config.score.scales='(1,)' --cpu_devices 2).
set -euo pipefail
cd "$(dirname "$0")/.."
root=runs/reference
mkdir -p "$root"
cp -rn docs/results/reference/. "$root"/  # finished evaluations are kept in git
part=(--config.data.category=part --config.data.root="$root/part_data"
  --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60)
[ -f "$root/part_baselines.json" ] || python launch/baselines.py --config configs/demo.py \
  "${part[@]}" --json "$root/part_baselines.json"
for seed in 0 1; do
  w="$root/part_s$seed"
  if [ ! -f "$w/eval_auto.json" ]; then
    python launch/train.py --config configs/demo.py --workdir "$w" "${part[@]}" \
      --config.train.seed="$seed" --config.score.reference=auto --config.score.stride=32 \
      --cpu_devices 2
    cp "$w/eval/metrics.json" "$w/eval_auto.json"
  fi
  for run in none:32 mean:32 auto:16 none:16; do
    setting=${run%:*} stride=${run#*:} name=$setting
    [ "$stride" = 32 ] || name=${setting}_stride$stride
    [ -f "$w/eval_$name.json" ] && continue
    python launch/evaluate.py --workdir "$w" --config configs/demo.py "${part[@]}" \
      --config.train.seed="$seed" --config.score.reference="$setting" \
      --config.score.stride="$stride"
    cp "$w/eval/metrics.json" "$w/eval_$name.json"
  done
  if [ -d "$w/eval" ]; then cp "$w/eval_auto.json" "$w/eval/metrics.json"; fi  # its own setting
done
w="$root/mt_full_s0"
if [ -d "$w/checkpoints" ]; then
  for run in none:32 mean:32 none:16; do
    setting=${run%:*} stride=${run#*:} name=$setting
    [ "$stride" = 32 ] || name=${setting}_stride$stride
    [ -f "$w/eval_$name.json" ] && continue
    python launch/evaluate.py --workdir "$w" --config configs/study.py \
      --config.score.scales='(1,)' --config.score.reference="$setting" \
      --config.score.stride="$stride"
    cp "$w/eval/metrics.json" "$w/eval_$name.json"
  done
fi
