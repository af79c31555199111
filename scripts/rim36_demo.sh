#!/usr/bin/env bash
# The rim plan's part 3 (docs/results/mt34/PLAN_rim.md): fresh demo seeds 3-8 (wood, an
# unaligned texture) trained with today's defaults (eval.threshold_rim=True), each scored
# again with eval.threshold_rim=false into <run>_norim, then the label-free F1 table and part
# 3's rule (scripts/rim_table.py f1: without the rim -> with it, as trained).
#
#   bash scripts/rim36_demo.sh
#
# Resumable: a finished run or scoring is skipped, an interrupted run resumes from its last
# checkpoint. Run from the repository root with nothing else on the cores.
# Records: docs/results/rim36/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/rim36
records=docs/results/rim36
mkdir -p "$out" "$records"
pairs=()
for s in 3 4 5 6 7 8; do
  name=demo_s$s
  [ -f "$out/$name/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$out/$name" --config.eval.max_pictures=4 --config.train.seed=$s
  cp "$out/$name/eval/metrics.json" "$records/$name.json"
  [ -f "$records/${name}_norim.json" ] || {
    python scripts/score_variant.py "$out/$name" "$out/${name}_norim" eval.threshold_rim=false
    cp "$out/${name}_norim/eval/metrics.json" "$records/${name}_norim.json"
  }
  pairs+=("$name=$records/${name}_norim.json:$records/$name.json")
done
python scripts/rim_table.py f1 "${pairs[@]}"
