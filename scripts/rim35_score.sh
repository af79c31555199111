#!/usr/bin/env bash
# Scores each finished run of scripts/rim35_study.sh again with eval.image_score=top_inner (the
# rim from its held-out normal maps) into <run>_inner, and prints the plan's table
# (scripts/rim_table.py; docs/results/mt34/PLAN_rim.md).
#
#   bash scripts/rim35_score.sh
#
# Resumable: a scored run is skipped; runs not trained yet are left for a later call. Run
# from the repository root with nothing else on the cores. Records: docs/results/rim35/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/rim35
records=docs/results/rim35
pairs=()
for name in demo_s1 demo_s2 cast_crack_s15 cast_crack_s16 mt_s2 mt_s3 mt_s4; do
  [ -f "$records/$name.json" ] || continue
  [ -f "$records/${name}_inner.json" ] || {
    python scripts/score_variant.py "$out/$name" "$out/${name}_inner" eval.image_score=top_inner
    cp "$out/${name}_inner/eval/metrics.json" "$records/${name}_inner.json"
  }
  pairs+=("$name=$records/$name.json:$records/${name}_inner.json")
done
[ ${#pairs[@]} -eq 0 ] || python scripts/rim_table.py "${pairs[@]}"
