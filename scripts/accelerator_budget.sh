#!/usr/bin/env bash
# configs/magnetic_tile.py at several training budgets and compute dtypes, trained and
# evaluated one after another on one accelerator (runs side by side share its throughput:
# BENCHMARKS.md, twenty-eighth session). The data travel pre-resized:
#
#   python scripts/resize_copy.py ../shared/datasets/magnetic_tile runs/mt256 --image_size 256
#   bash scripts/accelerator_budget.sh runs/mt256 OUT_DIR
#
# The default RUNS are those the twenty-eighth session's lease could not finish (their time
# alone on one H200: BENCHMARKS.md). RUNS lists NAME:MULTIPLE:DTYPE:SEED[:OVERRIDES], in the
# order to run: MULTIPLE times the config's 1500 + 750 steps (BASE1, BASE2 change that base),
# OVERRIDES as section.field=value,... At DEADLINE_S seconds the run going is stopped and the
# rest skipped (so is a run with fewer than MIN_RUN_S seconds left for it); the workdirs
# without their checkpoints land in OUT_DIR/budget.tgz, a summary in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=$1
OUT=$2
WORK="${WORK:-runs/accelerator_budget}"
DEADLINE_S="${DEADLINE_S:-520}"
MIN_RUN_S="${MIN_RUN_S:-180}"  # a run that would start with less time left is skipped
BASE1="${BASE1:-1500}"
BASE2="${BASE2:-750}"
RUNS="${RUNS:-x4_s1:4:float32:1 x4ae_s0:4:float32:0:model.variant=ae x4bf_s0:4:bfloat16:0}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT" "$WORK"
start=$(date +%s)
command -v nvidia-smi > /dev/null &&
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 5 > "$WORK/gpu_util.csv" &

for spec in $RUNS; do
  IFS=: read -r name mult dtype seed overrides <<< "$spec"
  extra=()
  for o in ${overrides//,/ }; do extra+=("--config.$o"); done
  s1=$((BASE1 * mult))
  s2=$((BASE2 * mult))
  left=$((DEADLINE_S - ($(date +%s) - start)))
  [ "$left" -ge "$MIN_RUN_S" ] || { echo "$name skipped: ${left}s left" >> "$WORK/done.txt"; continue; }
  t0=$(date +%s)
  timeout "$left" "$PY" launch/train.py --config configs/magnetic_tile.py \
    --workdir "$WORK/$name" --config.data.root="$DATA" --config.train.seed="$seed" \
    --config.model.dtype="$dtype" --config.train.stage1_steps="$s1" \
    --config.train.stage2_steps="$s2" --config.train.checkpoint_every="$(((s1 + s2) / 3))" \
    --config.eval.max_pictures=4 --config.eval.held_out_check=false "${extra[@]}" \
    > "$WORK/$name.out" 2>&1
  echo "$name rc $? in $(($(date +%s) - t0))s" >> "$WORK/done.txt"
done
pkill -f "nvidia-smi --query-gpu" 2> /dev/null

"$PY" - "$WORK" <<'EOF' > "$OUT/summary.txt"
import glob, json, os, sys
keys = ("pixel_aupro", "pixel_f1", "pixel_f1_max", "pixel_auroc", "image_auroc", "threshold")
for m in sorted(glob.glob(sys.argv[1] + "/*/eval/metrics.json")):
    r = json.load(open(m))
    name = m.split("/")[-3]
    print(name, {k: r.get(k) for k in keys})
    for t, v in sorted(r.get("per_type", {}).items()):
        print("   ", t, {k: v.get(k) for k in keys if k in v})
EOF
cat "$WORK/done.txt" >> "$OUT/summary.txt" 2> /dev/null
echo "total $(($(date +%s) - start))s" >> "$OUT/summary.txt"
tar czf "$OUT/budget.tgz" --exclude=checkpoints -C "$(dirname "$WORK")" "$(basename "$WORK")"
cat "$OUT/summary.txt"
