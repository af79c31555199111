# Functions shared by the synthetic study scripts: source it after setting `out` (the runs'
# folder) and `records` (where each evaluation's metrics.json is copied). Resumable: a
# finished run, scoring or baseline file is skipped.
mkdir -p "$records"
# The scorings plans 7-9 compare with `run`: MSFR with no reference (what `auto` gives images
# it finds unaligned) and msfr_pixel with the z-scored reference forced (aligned).
msfr=msfr:score.method=msfr,score.reference=none
mpz=mpz:score.method=msfr_pixel,score.reference=zscore

run() {  # category seed own_label [name:section.field=value[,section.field=value...]]...
  local category=$1 s=$2 own=$3
  shift 3
  local w=$out/${category}_s$s
  [ -f "$w/eval/metrics.json" ] || python launch/train.py --config configs/demo.py \
    --workdir "$w" --config.data.category="$category" --config.data.root=$out/data \
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60 \
    --config.train.seed="$s"
  cp "$w/eval/metrics.json" "$records/${category}_s${s}_$own.json"
  local v name changes
  for v in "$@"; do
    name=${v%%:*} changes=${v#*:}
    # shellcheck disable=SC2086  # one argument per change
    python scripts/score_variant.py "$w" "${w}_$name" ${changes//,/ }
    cp "${w}_$name/eval/metrics.json" "$records/${category}_s${s}_$name.json"
  done
}

baselines() {  # category
  [ -f "$records/$1_baselines.json" ] || python launch/baselines.py --config configs/demo.py \
    --config.data.category="$1" --config.data.root=$out/data \
    --config.data.synthetic_num_train=100 --config.data.synthetic_num_test=60 \
    --json "$records/$1_baselines.json"
}
