"""The alignment test's narrowing on runs' normal images, on MSFR maps as they are and on each
map divided by its own median (gain-free).

    python scripts/alignment_narrowing.py runs/lit27/cast_lit_crack_s0 runs/demo \
        --out docs/results/lit27/narrowing.json

For each run, `evaluate`'s own reference step with `score.reference=auto` on MSFR maps (what
`score.method=auto` decides alignment on), once with `score.normalize=none` and once with
`median`: the narrowing 1 - excess_mean / excess_none (`reference.choose`), where excess is
the held-out normal maps' 0.999 quantile minus their mean, with and without the per-position
mean of the training images' maps subtracted. Normal images only; no defect label. Plan:
docs/results/lit27/PLAN_lit27.md (addendum).
"""

import argparse
import json
import pathlib

from cmaae_jax import alignment, devices, evaluate, reference
from cmaae_jax import workdir as workdir_lib

NORMALIZATIONS = ("none", "median")


def narrowing(workdir: pathlib.Path, normalize: str) -> dict:
    config = workdir_lib.load_config(workdir)
    with config.unlocked():
        config.score.method, config.score.reference = "msfr", "auto"
        config.score.normalize = normalize
    restored = evaluate._restore(config, str(workdir), None)
    _, _, record = alignment.normal_reference(
        restored.scorer, restored.splits, restored.config, "auto"
    )
    share = reference.narrowing(record)
    return {**record, "narrowing": share, "aligned": share >= reference.MIN_NARROWING}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="trained workdirs")
    parser.add_argument("--out", required=True, help="JSON: run -> normalize -> record")
    args = parser.parse_args()
    devices.set_cpu_devices(-1)
    out = pathlib.Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else {}  # resumes
    for name in args.runs:
        if name not in rows:
            rows[name] = {n: narrowing(pathlib.Path(name), n) for n in NORMALIZATIONS}
            out.write_text(json.dumps(rows, indent=2, sort_keys=True))
        print(name, {n: round(r["narrowing"], 3) for n, r in rows[name].items()})


if __name__ == "__main__":
    main()
