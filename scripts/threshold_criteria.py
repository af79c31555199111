"""Criteria for a threshold from GAAGA pastes, measured on trained runs in one pass each.

    python scripts/threshold_criteria.py runs/demo_final runs/demo_carpet \
        --out runs/threshold_criteria

`eval.threshold_rule=pastes` takes the threshold of best pixel F1 over the held-out normal
images and their pasted copies; that F1 depends on how common pasted pixels are (3-4% of a
pasted image), which real defects are not (RESULTS.md, tenth session). This script scores
each run's held-out images (clean and pasted, as the rule does), the test split once, and
reports the per-defect-type F1 (and the pooled F1 over all test images) that several
criteria on the pastes would give, alone and floored at the quantile rule's threshold:

- `quantile`: the run's quantile rule (`eval.threshold_quantile` of held-out normal pixels);
- `pastes`: the current rule's best F1 (pasted pixels as common as they are);
- `prior_P`: best F1 if defect pixels were a share P of all pixels: with TPR(t) over the
  pasted pixels and FPR(t) over every normal pixel, F1 = 2 P TPR / (P TPR + P + (1-P) FPR);
- `recall_R`: the highest threshold that still flags a share R of the pasted pixels;
- `near_X`: the lowest threshold whose F1 at P = 0.005 (the default `eval.paste_prior`) is
  within a share X of the best (`prior_0.005` takes the highest threshold of the best): the
  pastes' F1 is flat over a wide range on z-scored maps, and real defects are fainter;
- `prior_est_q`, `prior_est_r50`: `prior_P` with P estimated from the unlabelled test
  images: the share E(t) of all test pixels at or above t is (1 - P) FPR(t) + P TPR(t), so
  P = (E - FPR) / (TPR - FPR) (clipped to [1e-4, 0.2]), read at the quantile rule's
  threshold (`_q`) or where the pastes' TPR is 0.5 (`_r50`). Test images enter only as
  unlabelled pixels (E counts every pixel, defect or not).

No test mask enters a threshold; masks only score them. Each run's record is written to
`<out>/<run path with / as __>.json` and not recomputed (resumable).
"""

import argparse
import json
import pathlib
import tempfile

import numpy as np

PRIORS = (0.001, 0.005, 0.02)
RECALLS = (0.25, 0.5)
NEAR = (0.05, 0.1, 0.2)  # `near_X`: within a share X of the best F1 at P = NEAR_PRIOR
NEAR_PRIOR = 0.005


def near_best_threshold(acc, prior: float, share: float) -> float:
    """The lowest threshold whose F1_P is at least (1 - share) x the best F1_P."""
    c = acc.curves()  # thresholds descending
    tpr = c["tp"] / c["num_pos"]
    fpr = c["fp"] / max(1, c["num_neg"])
    f1 = 2 * prior * tpr / (prior * tpr + prior + (1 - prior) * fpr)
    return float(c["thresholds"][np.flatnonzero(f1 >= (1 - share) * f1.max())[-1]])


def candidates(acc, floor: float) -> dict:
    """Thresholds by criterion name (see the module docstring), before the floor, from the
    pastes' pixel counts `acc` (`calibration.paste_accumulator`)."""
    from cmaae_jax import calibration

    c = acc.curves()
    tpr = c["tp"] / c["num_pos"]
    out = {"quantile": floor, "pastes": acc.result()["pixel_f1_max_threshold"]}
    for p in PRIORS:
        out[f"prior_{p:g}"] = calibration.prior_f1_threshold(acc, p)
    for r in RECALLS:  # thresholds descend: the first that reaches the recall
        out[f"recall_{r:g}"] = float(c["thresholds"][int(np.argmax(tpr >= r))])
    for x in NEAR:
        out[f"near_{x:g}"] = near_best_threshold(acc, NEAR_PRIOR, x)
    return out


def share_at_or_above(curves: dict, t: float, positives: bool | None) -> float:
    """The share of an accumulator's pixels scoring >= t: positives, negatives, or (None) all
    of them, which needs no label (the sum of both counts)."""
    i = int(np.searchsorted(-curves["thresholds"], -t, side="right")) - 1
    if i < 0:
        return 0.0
    if positives is None:
        return float(curves["tp"][i] + curves["fp"][i]) / (curves["num_pos"] + curves["num_neg"])
    key, num = ("tp", "num_pos") if positives else ("fp", "num_neg")
    return float(curves[key][i]) / max(1, curves[num])


def estimated_prior(paste_curves: dict, test_curves: dict, t: float) -> float:
    """P from E(t) = (1 - P) FPR(t) + P TPR(t) (module docstring), clipped to [1e-4, 0.2]."""
    tpr = share_at_or_above(paste_curves, t, True)
    fpr = share_at_or_above(paste_curves, t, False)
    excess = share_at_or_above(test_curves, t, None) - fpr
    return float(np.clip(excess / max(tpr - fpr, 1e-9), 1e-4, 0.2))


def estimated_candidates(acc, pooled, anchors: dict) -> tuple[dict, dict]:
    """`prior_est_<name>` thresholds, P estimated at each anchor threshold (name: t), and
    the estimated shares themselves."""
    from cmaae_jax import calibration

    paste_c, test_c = acc.curves(), pooled.curves()
    shares = {name: estimated_prior(paste_c, test_c, t) for name, t in anchors.items()}
    thresholds = {
        f"prior_est_{name}": calibration.prior_f1_threshold(acc, p) for name, p in shares.items()
    }
    return thresholds, shares


def measure(run: pathlib.Path) -> dict:
    """{criterion: threshold}, and per type {criterion: F1} and F1 max, for one run."""
    from cmaae_jax import calibration, datasets, evaluate, inference
    from cmaae_jax import workdir as workdir_lib

    config = workdir_lib.load_scoring_config(run)  # the score fields of its evaluation
    config.eval.threshold_rule = "pastes"
    _, variables = inference.restore_variables(config, str(run))
    splits = datasets.load_splits(config)
    scorer = inference.Scorer(config, variables)
    seen = {}
    paste_threshold = calibration.paste_threshold

    def capture(normal_maps, pasted_maps, paste_masks, *prior):
        seen.update(normal=normal_maps, pasted=pasted_maps, masks=paste_masks)
        return paste_threshold(normal_maps, pasted_maps, paste_masks, *prior)

    calibration.paste_threshold = capture
    try:
        chosen = evaluate.calibrate(
            scorer, splits, config, rescorer=inference.rescorer(config, variables)
        )
    finally:
        calibration.paste_threshold = paste_threshold
    floor = chosen.candidates["quantile"]
    acc = calibration.paste_accumulator(seen["normal"], seen["pasted"], seen["masks"])
    found = candidates(acc, floor)
    found.update({f"{k}_floored": max(v, floor) for k, v in found.items() if k != "quantile"})
    with tempfile.TemporaryDirectory() as tmp:
        pooled, per_type = evaluate._score_test(
            chosen.scorer, splits["test"], floor, chosen.ref, pathlib.Path(tmp), 0
        )
    anchors = {"q": floor, "r50": found["recall_0.5"]}  # where the pastes' TPR reaches 0.5
    estimated, shares = estimated_candidates(acc, pooled, anchors)
    found.update(estimated)
    f1 = {}
    for name, t in found.items():
        for kind, r in per_type.result(t).items():
            f1.setdefault(kind, {"f1_max": r["pixel_f1_max"]})[name] = r["pixel_f1"]
    pooled_f1 = {name: pooled.result(t)["pixel_f1"] for name, t in found.items()}
    pooled_f1["f1_max"] = pooled.result()["pixel_f1_max"]
    return {
        "thresholds": found,
        "per_type_f1": f1,
        "pooled_f1": pooled_f1,
        "estimated_share": shares,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/threshold_criteria"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for run in args.runs:
        path = args.out / (str(run).strip("/").replace("/", "__") + ".json")
        if not path.is_file():
            path.write_text(json.dumps(measure(run), indent=2, sort_keys=True))
        rows[str(run)] = json.loads(path.read_text())
    names = list(next(iter(rows.values()))["thresholds"])
    print("| run | " + " | ".join(names) + " | F1 max |")
    print("|---|" + "---:|" * (len(names) + 1))
    for run, rec in rows.items():
        kinds = [k for k in rec["per_type_f1"] if k != "good"]
        means = [np.mean([rec["per_type_f1"][k][n] for k in kinds]) for n in names]
        best = np.mean([rec["per_type_f1"][k]["f1_max"] for k in kinds])
        print(f"| {run} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {best:.3f} |")


if __name__ == "__main__":
    main()
