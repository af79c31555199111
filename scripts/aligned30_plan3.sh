#!/usr/bin/env bash
# Thirtieth session, plan 3 (docs/results/aligned30/PLAN.md): fresh aligned runs (demo
# budget) and their MSFR / pixel map dumps for scripts/aligned_fusions.py. Resumable: a
# finished run or dump is skipped. Run from the repository root with nothing else on the
# cores; the dumps go to runs/aligned30/maps3/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/aligned30
mkdir -p "$out/maps3"
train() {  # data_root category seed
  local w=$out/$2_s$3
  [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$w" --config.data.category="$2" --config.data.root="$1" \
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60 \
    --config.train.seed="$3" --config.eval.max_pictures=4
  [ -f "$out/maps3/$2_s$3.pkl" ] || python scripts/aligned_fusions.py dump "$w" "$out/maps3/$2_s$3.pkl"
}
train runs/lit27/data cast_lit_crack 5
train runs/aligned26/data cast_crack 6
train runs/aligned26/data part_crack 5
train runs/lit27/data cast_lit 3
train runs/aligned26/data cast 4
train runs/lit27/data cast_lit_crack 6
train runs/aligned26/data cast_crack 7
train runs/aligned26/data part 6
