#!/usr/bin/env bash
# Scores each finished run of scripts/rim35_study.sh again with eval.image_score=top_inner (the
# rim from its held-out normal maps) into <run>_inner and with eval.threshold_rim=true into
# <run>_trim, and prints the plan's two tables (scripts/rim_table.py;
# docs/results/mt34/PLAN_rim.md, parts 1 and 2).
#
#   bash scripts/rim35_score.sh
#
# Resumable: a scored run is skipped; runs not trained yet are left for a later call. Run
# from the repository root with nothing else on the cores. Records: docs/results/rim35/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/rim35
records=docs/results/rim35
images=() f1=()
for name in demo_s1 demo_s2 cast_crack_s15 cast_crack_s16 mt_s2 mt_s3 mt_s4; do
  [ -f "$records/$name.json" ] || continue
  for variant in inner:eval.image_score=top_inner trim:eval.threshold_rim=true; do
    suffix=${variant%%:*}
    [ -f "$records/${name}_$suffix.json" ] || {
      python scripts/score_variant.py "$out/$name" "$out/${name}_$suffix" "${variant#*:}"
      cp "$out/${name}_$suffix/eval/metrics.json" "$records/${name}_$suffix.json"
    }
  done
  images+=("$name=$records/$name.json:$records/${name}_inner.json")
  f1+=("$name=$records/$name.json:$records/${name}_trim.json")
done
[ ${#images[@]} -eq 0 ] || {
  python scripts/rim_table.py image "${images[@]}"
  echo
  python scripts/rim_table.py f1 "${f1[@]}"
}
