#!/usr/bin/env bash
# One accelerator session, prepared to fit a short device lease: the machine's facts, the
# benchmark at batch 512 (float32 and bfloat16), the demo end to end, then larger batches
# while time is left. Every step has its own time limit; a step that fails is reported and
# the others go on. Everything lands in OUT_DIR (default runs/accelerator_session):
#
#   bash scripts/accelerator_session.sh [OUT_DIR]
#
# BUDGET_S (default 420) bounds the whole script: the larger batches run only while at least
# EXTRA_S (default 150) seconds are left.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/accelerator_session}"
BUDGET_S="${BUDGET_S:-420}"
EXTRA_S="${EXTRA_S:-150}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - start))); }

step() {  # step NAME LIMIT_S COMMAND...: runs with a time limit, logs to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s, $(left)s left)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc $rc in $(($(date +%s) - t0))s"
  [ $rc -eq 0 ] || tail -5 "$OUT/$name.log"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
  "$PY" -c "import sys, jax, flax, optax, orbax.checkpoint as o, numpy; \
print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', \
optax.__version__, 'orbax', o.__version__, 'numpy', numpy.__version__); print(jax.devices())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

bench() {  # bench BATCH DTYPE
  step "bench_b$1_$2" 120 "$PY" launch/benchmark.py --batch "$1" --steps 20 --warmup 5 \
    --dtype "$2" --infer-images 20 --infer-batch 16 --gaaga-batch 64 --json "$OUT/b$1_$2.json"
}
bench 512 float32
bench 512 bfloat16
TIMER=()
[ -x /usr/bin/time ] && TIMER=(/usr/bin/time -v)
step demo 240 "${TIMER[@]}" "$PY" launch/train.py --config configs/demo.py \
  --workdir "$OUT/demo" --config.data.root="$OUT/demo_data"
for batch in 2048 4096; do
  for dtype in float32 bfloat16; do
    [ "$(left)" -ge "$EXTRA_S" ] && bench "$batch" "$dtype"
  done
done
"$PY" - "$OUT" <<'EOF' > "$OUT/summary.txt"
import glob, json, sys
keys = ("train_patches_per_s", "train_step_s_median", "infer_ms_per_image_median",
        "infer_batched_ms_per_image_median", "compile_s", "gaaga_images_per_s", "train_peak_rss_mb")
for path in sorted(glob.glob(sys.argv[1] + "/b*.json")):
    r = json.load(open(path))
    print(path.split("/")[-1], {k: r.get(k) for k in keys})
try:
    m = json.load(open(sys.argv[1] + "/demo/eval/metrics.json"))
    print("demo", {k: v for k, v in m.items() if not isinstance(v, (dict, list))})
except OSError as e:
    print("demo: no metrics", e)
EOF
cat "$OUT/summary.txt"
echo "total $(($(date +%s) - start))s"
