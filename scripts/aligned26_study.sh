#!/usr/bin/env bash
# Plan 5 (docs/results/aligned26/PLAN_aligned26.md): Z, MPZ and PZ on fresh aligned runs,
# the rough cast surface among them. Resumable: a finished run, scoring or baseline file is
# skipped. Run from the repository root with nothing else on the cores. Records are copied to
# docs/results/aligned26/records/; the table: scripts/records_table.py --pooled (RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/aligned26
records=docs/results/aligned26/records
source scripts/study_runs.sh
# Trained before score.method=auto landed: the run's own evaluation is Z.
for c in "cast_crack 0" "cast_crack 1" "cast 0" "cast 1" "part_crack 7" "part 3"; do
  run $c z mpz:score.method=msfr_pixel pz:score.method=pixel
done
for c in cast_crack cast part_crack part; do baselines $c; done
# Seeds 2, 3 of part_crack (Z's pastes threshold failed there, twenty-fifth session), trained
# after score.method=auto landed: the run's own evaluation is the new default (`auto`: MPZ).
run part_crack 2 auto z:score.method=msfr pz:score.method=pixel
run part_crack 3 auto z:score.method=msfr pz:score.method=pixel
# After the build, fresh seeds of each family with the new default against Z (no decision).
run cast_crack 2 auto z:score.method=msfr
run cast 2 auto z:score.method=msfr
run part 4 auto z:score.method=msfr
