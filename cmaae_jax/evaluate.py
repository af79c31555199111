"""Checkpoint-based evaluation: label-free threshold, pooled pixel metrics, pictures.

The threshold is the `eval.threshold_quantile` quantile of the anomaly scores of held-out
normal training images (`eval.val_fraction` of train/good): no defect label is used to pick
it, so `pixel_f1` is the deployable number; `pixel_f1_max` is the best F1 over all thresholds.
`per_type` repeats the metrics for each defect type (its images and all normal test images).
"""

import json
import pathlib
import time

import jax
import numpy as np
from absl import logging

from cmaae_jax import calibration, configlib, datasets, inference, metrics, pictures
from cmaae_jax import workdir as workdir_lib


def calibrate(scorer, val_split, quantile: float) -> float:
    if val_split.num_images == 0:
        raise datasets.DatasetError(
            "no held-out normal images to calibrate the threshold: set eval.val_fraction > 0"
        )
    return calibration.threshold_from_normal(scorer(val_split.images), quantile)


def evaluate(config, workdir, step: int | None = None) -> dict:
    """Restores a checkpoint, scores the test split, writes `<workdir>/eval/metrics.json`."""
    configlib.validate(config)
    t0 = time.perf_counter()
    ckpt_step, variables = inference.restore_variables(config, workdir, step)
    splits = datasets.load_splits(config)
    scorer = inference.Scorer(config, variables)
    threshold = calibrate(scorer, splits["val"], config.eval.threshold_quantile)
    test = splits["test"]
    out = workdir_lib.eval_dir(workdir)
    (out / workdir_lib.PICTURES).mkdir(parents=True, exist_ok=True)
    acc = metrics.PixelAccumulator(thresholds=(threshold,))
    per_type = metrics.PerTypeAccumulator(test.defect_types, test.labels, (threshold,))
    primary = jax.process_index() == 0  # every process scores; only the primary writes
    written = 0 if primary else config.eval.max_pictures
    for lo, maps in scorer.batches(test.images):
        hi = lo + len(maps)
        acc.update(maps, test.masks[lo:hi])
        per_type.update(maps, test.masks[lo:hi], test.defect_types[lo:hi], test.labels[lo:hi])
        for j, amap in enumerate(maps):
            i = lo + j
            if test.labels[i] == 1 and written < config.eval.max_pictures:
                name = f"{test.defect_types[i]}_{pathlib.Path(test.paths[i]).stem}.png"
                pictures.save_overlay(
                    out / workdir_lib.PICTURES / name,
                    test.images[i],
                    test.masks[i],
                    amap,
                    threshold,
                    title=f"max {amap.max():.3g} / thr {threshold:.3g}",
                )
                written += 1
    result = acc.result(threshold)
    precision, recall, _ = acc.pr_curve()
    pictures.save_pr_curve(
        out / workdir_lib.PR_CURVE, precision, recall, (result["precision"], result["recall"])
    )
    result.update(
        threshold=float(threshold),
        num_images=int(test.num_images),
        num_defective=int(np.sum(test.labels)),
        checkpoint_step=int(ckpt_step),
        method=config.score.method,
        scales=list(config.score.scales),
        threshold_rule=f"quantile {config.eval.threshold_quantile} of held-out normal pixel scores",
        eval_seconds=time.perf_counter() - t0,
        devices=jax.local_device_count(),
        per_type={
            name: {k: r[k] for k in (*metrics.HEADLINE_KEYS, "num_images", "num_positive_pixels")}
            for name, r in per_type.result(threshold).items()
        },
    )
    if primary:
        workdir_lib.eval_metrics_path(workdir).write_text(
            json.dumps(result, indent=2, sort_keys=True)
        )
    logging.info("eval at step %d: %s", ckpt_step, {k: result[k] for k in metrics.HEADLINE_KEYS})
    return result
