"""Does the held-out check rank runs as their real-defect test AUPRO does?

    python scripts/held_out_ranks.py runs/study512b/varied/seed2 \
        runs/study512b/varied_ema_last/seed2=last ... --out held_out_ranks.json

Each run (a study workdir; `=last` scores it with `score.weights=last`) gets the held-out
check (`evaluate.check_held_out`, written to its eval/held_out.json; a run that has one is not
scored again, so an interrupted call resumes). A run without its own config.json (a study row
scored from another row's checkpoints) uses the config beside the checkpoints it links to.
Then the Spearman correlation of each held-out key with the test mean AUPRO over `--types`
(from the run's study.json) over all runs. Plan: docs/results/study512b/PLAN_held_out.md.
"""

import argparse
import json
import pathlib

import numpy as np
import scipy.stats

from cmaae_jax import calibration, evaluate
from cmaae_jax import workdir as workdir_lib


def run_config(workdir: pathlib.Path, weights: str | None):
    """The run's config (or its checkpoints' source run's), scored with `weights`."""
    source = workdir
    if not workdir_lib.config_path(workdir).is_file():
        source = workdir_lib.checkpoints_dir(workdir).resolve().parent
    config = workdir_lib.load_config(source)
    if weights:
        with config.unlocked():
            config.score.weights = weights
    return config


def held_out(workdir: pathlib.Path, weights: str | None) -> dict:
    path = workdir_lib.held_out_path(workdir)
    if not path.is_file():
        evaluate.check_held_out(run_config(workdir, weights), str(workdir))
    return json.loads(path.read_text())["held_out"]


def defect_mean(workdir: pathlib.Path, types) -> float:
    per_type = json.loads((workdir / "study.json").read_text())["per_type"]
    return float(np.mean([per_type[t]["pixel_aupro"] for t in types]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="study workdirs, WORKDIR=last for last-step")
    parser.add_argument("--types", default="blowhole,break,crack,fray")
    parser.add_argument("--out", required=True, help="JSON with every run and the correlations")
    args = parser.parse_args()
    types = args.types.split(",")
    rows = []
    for spec in args.runs:
        name, _, weights = spec.partition("=")
        workdir = pathlib.Path(name)
        check = held_out(workdir, weights or None)
        rows.append({"run": spec, "test_mean_aupro": defect_mean(workdir, types), **check})
        print(json.dumps(rows[-1]), flush=True)
    test = [r["test_mean_aupro"] for r in rows]
    rho = {
        key: float(scipy.stats.spearmanr([r[key] for r in rows], test).statistic)
        for key in calibration.HELD_OUT_KEYS
    }
    print("spearman with the test mean AUPRO:", json.dumps(rho))
    out = {"types": types, "runs": rows, "spearman": rho}
    pathlib.Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
