"""Does the held-out check rank recorded runs as the test does? (from records, no scoring)

    python scripts/held_out_records.py docs/results/study512*/varied/seed*

Reads each record's eval/metrics.json (`held_out`: the label-free check of GAAGA pastes on
held-out normal images; `per_type`: the test metrics) and prints, over the records that have
the check, the Spearman correlation of each held-out key with the test mean AUPRO over
`--types`, and, for every pair of records in one folder (one option, two seeds), whether the
record with the higher held-out AUPRO is the one with the higher test AUPRO, and what
choosing by it gains over the pair's mean. Records listed twice (the same file) count once.
`scripts/held_out_ranks.py` computes the check for runs that lack it.
"""

import argparse
import itertools
import json
import pathlib

import numpy as np
import scipy.stats

from cmaae_jax import calibration
from cmaae_jax import workdir as workdir_lib


def load(record: pathlib.Path, types) -> dict | None:
    """{'group', 'name', 'test', held-out keys} of one record, None without the check."""
    metrics = json.loads(workdir_lib.eval_metrics_path(record).read_text())
    held = metrics.get("held_out")
    if not held:
        return None
    test = float(np.mean([metrics["per_type"][t]["pixel_aupro"] for t in types]))
    return {
        "group": str(record.parent),
        "name": str(record),
        "test": test,
        **{k: float(held[k]) for k in calibration.HELD_OUT_KEYS},
    }


def pair_choices(rows) -> tuple[int, int, list[float]]:
    """(pairs where the higher held-out AUPRO has the higher test AUPRO, pairs, gains of that
    choice over the pair's mean test AUPRO), over pairs within one group."""
    right, gains, pairs = 0, [], 0
    for a, b in itertools.combinations(rows, 2):
        if a["group"] != b["group"]:
            continue
        pairs += 1
        chosen = a if a["pixel_aupro"] > b["pixel_aupro"] else b
        right += chosen["test"] == max(a["test"], b["test"])
        gains.append(chosen["test"] - (a["test"] + b["test"]) / 2)
    return right, pairs, gains


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="+", help="record folders holding eval/metrics.json")
    p.add_argument("--types", default="blowhole,break,crack,fray")
    args = p.parse_args()
    types = args.types.split(",")
    seen, rows = set(), []
    for r in map(pathlib.Path, args.records):
        key = workdir_lib.eval_metrics_path(r).resolve()
        if key in seen or not key.is_file():
            continue
        seen.add(key)
        row = load(r, types)
        if row is not None:
            rows.append(row)
    test = [r["test"] for r in rows]
    print(f"{len(rows)} records with the held-out check")
    for k in calibration.HELD_OUT_KEYS:
        rho = scipy.stats.spearmanr(test, [r[k] for r in rows])[0]
        print(f"Spearman(test mean AUPRO, held-out {k}) = {rho:.2f}")
    right, pairs, gains = pair_choices(rows)
    if pairs:
        print(
            f"pairs within a folder: the higher held-out AUPRO has the higher test AUPRO in "
            f"{right} of {pairs}; gain over the pair's mean {np.mean(gains):+.4f} "
            f"(range {min(gains):+.4f} to {max(gains):+.4f})"
        )


if __name__ == "__main__":
    main()
