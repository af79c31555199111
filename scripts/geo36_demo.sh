#!/usr/bin/env bash
# docs/results/geo36/PLAN.md (the geomean threshold for unaligned maps): fresh demo seeds 9-14
# (12 and on: the plan's rule 3) with today's defaults; prints each run's map, the rule that
# set its threshold and the recorded candidates' pooled F1.
#
#   bash scripts/geo36_demo.sh
#
# Resumable: a finished run is skipped, an interrupted one resumes from its last checkpoint.
# Run from the repository root with nothing else on the cores. Records: docs/results/geo36/
# (RECORDS=, OUT= and SEEDS= change the folders and the seeds: docs/results/geo37/PLAN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/geo36}
records=${RECORDS:-docs/results/geo36}
mkdir -p "$out" "$records"
for s in ${SEEDS:-9 10 11 12 13 14}; do
  [ -f "$out/demo_s$s/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$out/demo_s$s" --config.eval.max_pictures=4 --config.train.seed=$s
  cp "$out/demo_s$s/eval/metrics.json" "$records/demo_s$s.json"
done
python - "$records" <<'PY'
import json, pathlib, sys
print("| seed | map | threshold rule used | F1 pastes | F1 geomean | F1 quantile |")
print("|---|---|---|---|---|---|")
for path in sorted(pathlib.Path(sys.argv[1]).glob("demo_s*.json")):
    r = json.loads(path.read_text())
    f1 = r.get("threshold_candidates_f1", {})
    cells = " | ".join(f"{f1.get(k, float('nan')):.4f}" for k in ("pastes", "geomean", "quantile"))
    used = [k for k, t in r.get("threshold_candidates", {}).items() if t == r["threshold"]]
    print(f"| {path.stem} | {r['method']} | {'/'.join(used) or '?'} | {cells} |")
PY
