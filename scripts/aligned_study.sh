#!/usr/bin/env bash
# Map options on the aligned part and on its thin faint cracks (RESULTS.md, twenty-fifth
# session; docs/results/part_crack/PLAN_part_crack.md). Resumable: a finished run, dump or
# baseline file is skipped. Run from the repository root with nothing else on the cores;
# the analyses are printed (docs/results/part_crack/analysis.txt). End-to-end scorings of the
# runs with other score options: scripts/score_variant.py (RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
maps=/tmp/maps
mkdir -p "$maps"
study() {  # category, its defect types, seeds...
  local category=$1 types=$2
  shift 2
  local data=(--config.data.category="$category" --config.data.root=runs/aligned25/data
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60)
  for s in "$@"; do
    local w=runs/aligned25/${category}_s$s m=$maps/${category}_s$s
    [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
      --workdir "$w" "${data[@]}" --config.train.seed="$s"
    [ -f "$m.pkl" ] || python scripts/map_options.py dump "$w" "$m.pkl" --stride 16
    [ -f "${m}_pixel.pkl" ] || python scripts/map_options.py dump "$w" "${m}_pixel.pkl" \
      --stride 16 --method pixel
    [ -f "${m}_at128.pkl" ] || python scripts/map_options.py dump "$w" "${m}_at128.pkl" \
      --stride 16 --image-size 128
    python scripts/map_options.py fuse "${m}_mp.pkl" "$m.pkl" "${m}_pixel.pkl" \
      --scale median --combine mean
    python scripts/map_options.py fuse "${m}_py.pkl" "$m.pkl" "${m}_at128.pkl" \
      --scale median --combine geo
    for f in "" _mp _py _pixel; do  # A, MP, PY, pixel: minus the mean; Z, MPZ, -, PZ: meanvar
      echo "== $category seed $s: msfr$f"
      python scripts/map_options.py analyse "$m$f.pkl" --sigmas 0 --normalize none \
        --reference mean,meanvar --types "$types" --quantiles 0.999
    done
  done
  [ -f "runs/aligned25/${category}_baselines.json" ] || python launch/baselines.py \
    --config configs/demo.py "${data[@]}" --json "runs/aligned25/${category}_baselines.json"
}
study part_crack crack 0 1 2 3 4 5 6
study part contamination,cut,hole,scratch,spot 0 1 2
