#!/usr/bin/env bash
# docs/results/crop_scales/PLAN_crop_scales.md: the defaults (A) and train.crop_scales=(1, 2)
# (B) on magnetic tile at 512 px, seeds 10 and 11, each rescored with score.pyramid=[1,2].
# Resumable: a finished study run or scoring is skipped, an interrupted one continues.
#     bash scripts/study_crop_scales.sh 10 11
set -euo pipefail
cd "$(dirname "$0")/.."
study() {  # root, seed, extra flags
    python launch/study.py --config configs/study.py --workdir_root "$1" --variants varied \
        --seeds "$2" --config.score.scales='(1,)' --config.data.image_size=512 \
        --config.anomaly.patch_size=256 "${@:3}"
}
for seed in "$@"; do
    study runs/study512_scales "$seed" --config.train.crop_scales='(1,2)'
    study runs/study512b "$seed"
done
for seed in "$@"; do
    for root in study512_scales study512b; do
        python scripts/score_variant.py "runs/$root/varied/seed$seed" \
            "runs/${root}_pyramid/varied/seed$seed" 'score.pyramid=[1,2]'
    done
done
