#!/usr/bin/env bash
# Benchmark on an accelerator machine (GPU/TPU), one command:
#
#   bash scripts/accelerator_bench.sh [OUT_DIR]
#
# Runs launch/benchmark.py at batch 512 and larger, in float32 and in mixed precision
# (bfloat16 compute, float32 parameters), with the native XLA convolutions that
# `conv_impl=auto` picks off CPU, and writes one JSON per run plus all.jsonl into OUT_DIR
# (default runs/accelerator_bench). BATCHES, STEPS and WARMUP override the defaults; a run
# that fails (e.g. out of memory at the largest batch) is reported and the others go on.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/accelerator_bench}"
BATCHES="${BATCHES:-512 1024 2048 4096}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-5}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
: > "$OUT/all.jsonl"
"$PY" -c "import jax; print('devices:', jax.devices())" || exit 1
status=0
for dtype in float32 bfloat16; do
  for batch in $BATCHES; do
    name="b${batch}_${dtype}"
    echo "== batch $batch, $dtype"
    if "$PY" launch/benchmark.py --batch "$batch" --steps "$STEPS" --warmup "$WARMUP" \
        --dtype "$dtype" --infer-images 20 --infer-batch 16 --gaaga-batch 64 \
        --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1; then
      "$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" \
        "$OUT/$name.json" >> "$OUT/all.jsonl"
      "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in \
        ('train_patches_per_s', 'train_step_s_median', 'infer_ms_per_image_median', \
        'infer_batched_ms_per_image_median', 'compile_s', 'gaaga_images_per_s')})" \
        "$OUT/$name.json"
    else
      echo "   failed, see $OUT/$name.log"; tail -3 "$OUT/$name.log"; status=1
    fi
  done
done
echo "results: $OUT/all.jsonl"
exit $status
