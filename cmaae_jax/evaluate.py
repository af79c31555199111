"""Checkpoint-based evaluation: label-free threshold, pooled pixel metrics, pictures.

The threshold comes from held-out normal training images (`eval.val_fraction` of train/good)
and their GAAGA-pasted copies, by the rule `eval.threshold_rule` names
(`cmaae_jax.calibration`; configs/default.py: `pastes`): no defect label is used to pick it, so
`pixel_f1` is the deployable number; `pixel_f1_max` is the best F1 over all thresholds.
`per_type` repeats the metrics for each defect type (its images and all normal test images).
Maps, masks and pictures are at the resized image's resolution, cropped to each image's valid
region (`data.resize=keep_aspect` pads images; the padding never counts). Defective images
that came without a mask (`Split.has_masks` False) count in image metrics only: a missing mask
is not a negative (`num_images_without_masks` says how many were left out of pixel metrics).
"""

import copy
import json
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from cmaae_jax import (
    calibration,
    configlib,
    console,
    datasets,
    inference,
    metrics,
    pictures,
    reference,
)
from cmaae_jax import state as state_lib
from cmaae_jax import workdir as workdir_lib


def valid_maps(scorer, split, indices=None, bar=None) -> list:
    """The valid maps [h_i, w_i] of `split`'s images (all, or those at `indices`), in order."""
    indices = np.arange(split.num_images) if indices is None else np.asarray(indices)
    images = [split.images[i] for i in indices]
    out = [None] * len(indices)
    for idx, maps in scorer.batches(images):
        for j, m in zip(idx, maps, strict=True):
            out[j] = split.valid_map(int(indices[j]), m)
        if bar is not None:
            bar.update(len(idx))
    return out


def pasted_held_out(scorer, val, config, bar=None):
    """(valid maps, paste masks) of the held-out images with GAAGA pastes
    (`calibration.pasted_split`)."""
    pasted, masks = calibration.pasted_split(val, config)
    return valid_maps(scorer, pasted, bar=bar), masks


def scores_pastes(config) -> bool:
    """Whether calibration scores the held-out images' pasted copies (the `pastes` rule or
    `eval.held_out_check`)."""
    rule = config.eval.get("threshold_rule", "quantile")
    return rule == "pastes" or config.eval.get("held_out_check", False)


class Calibration(NamedTuple):
    """What `calibrate` chose from normal images: the threshold, the reference (None: none
    used) and its record, the rule's candidate thresholds by name (the quantile's; with
    `pastes` also the pastes' best-F1 one, before the floor), and the held-out check
    (`calibration.held_out_check`; empty without `eval.held_out_check`)."""

    threshold: float
    ref: np.ndarray | None
    reference_record: dict
    candidates: dict
    held_out: dict


def calibrate(scorer, splits, config, bar=None) -> Calibration:
    """The reference (`score.reference`) from up to `score.reference_images` training images,
    its choice and the label-free threshold from the held-out val images; no defect label."""
    val = splits["val"]
    if val.num_images == 0:
        raise datasets.DatasetError(
            "no held-out normal images to calibrate the threshold: set eval.val_fraction > 0"
        )
    held_out = valid_maps(scorer, val, bar=bar)
    setting = config.score.get("reference", "none")
    quantile = config.eval.threshold_quantile
    ref, one_size = None, True
    if setting != "none":
        train = splits["train"]
        count = min(train.num_images, config.score.get("reference_images", 64))
        if count == 0:
            raise datasets.DatasetError("score.reference needs training images; found none")
        picked = np.unique(np.linspace(0, train.num_images - 1, count).round().astype(int))
        sizes = np.concatenate([train.sizes[picked], val.sizes])
        one_size = len({tuple(int(v) for v in hw) for hw in sizes}) == 1
        if one_size or setting != "auto":  # auto uses no reference for mixed sizes: skip it
            ref = reference.build(valid_maps(scorer, train, picked))
    kind, record = reference.choose(setting, ref, held_out, quantile, one_size)
    ref = reference.of_kind(ref, kind)
    held_out = reference.apply(ref, held_out)
    rule = config.eval.get("threshold_rule", "quantile")
    pooled = np.concatenate([m.ravel() for m in held_out])
    threshold = calibration.label_free_threshold(rule, pooled, quantile)
    candidates = {rule if rule == "head" else "quantile": threshold}
    check = {}
    if not scores_pastes(config):
        return Calibration(threshold, ref, record, candidates, check)
    maps, masks = pasted_held_out(scorer, val, config, bar)
    maps = reference.apply(ref, maps)
    if config.eval.get("held_out_check", False):
        check = calibration.held_out_check(held_out, maps, masks)
        logging.info("held-out check (pastes on held-out normal images): %s", check)
    if rule == "pastes":
        prior = config.eval.get("paste_prior", 0.0)
        best = calibration.paste_threshold(held_out, maps, masks, prior)
        logging.info(
            "pastes rule (prior %g): threshold %.6g, quantile's %.6g", prior, best, threshold
        )
        candidates["pastes"] = best
        threshold = calibration.pastes_rule(threshold, best, prior)
    return Calibration(threshold, ref, record, candidates, check)


def _score_test(scorer, test, threshold, ref, picture_dir, max_pictures, bar=None):
    """Scores the test split into (pooled, per-type) accumulators and writes up to
    `max_pictures` overlays of defective images; maps, masks and images are cropped to each
    image's valid region first (keep_aspect padding never counts). Image labels are the
    split's; images without a mask count in image metrics only."""
    acc = metrics.PixelAccumulator(thresholds=(threshold,))
    per_type = metrics.PerTypeAccumulator(test.defect_types, test.labels, (threshold,))
    known = test.mask_known()
    written = 0
    for idx, maps in scorer.batches(test.images):
        for pos, maps_g, masks_g in test.valid_groups(idx, maps):
            maps_g = reference.apply(ref, maps_g)
            acc.update(maps_g, masks_g, test.labels[pos], known[pos])
            types = [test.defect_types[i] for i in pos]
            per_type.update(maps_g, masks_g, types, test.labels[pos], known[pos])
        if bar is not None:
            bar.update(len(idx))
        for i, amap in zip(idx, maps, strict=True):
            if test.labels[i] == 1 and written < max_pictures:
                amap = reference.apply(ref, test.valid_map(i, amap))
                name = f"{test.defect_types[i]}_{pathlib.Path(test.paths[i]).stem}.png"
                pictures.save_overlay(
                    picture_dir / name,
                    test.valid_map(i, test.images[i]),
                    test.valid_map(i, test.masks[i]),
                    amap,
                    threshold,
                    title=f"max {amap.max():.3g} / thr {threshold:.3g}",
                )
                written += 1
    return acc, per_type


def _save_reference(path, ref):
    """Writes the chosen reference for predict and export; removes one an earlier evaluation
    left when this one chose none (it is derived data, rebuilt by evaluating again)."""
    if ref is not None:
        reference.save(path, ref)
    else:
        path.unlink(missing_ok=True)


class _Restored(NamedTuple):
    """A run bound to its own model and restored for scoring (`_restore`)."""

    config: object
    overrides: dict
    step: int
    splits: dict
    scorer: inference.Scorer


def _restore(config, workdir, step, **eval_fields) -> _Restored:
    """The run's config bound (`state.bind_config`) with `eval_fields` set, validated; its
    checkpoint (`step`, or the newest) restored, the data loaded, a scorer built."""
    config, overrides = state_lib.bind_config(config, workdir)
    if eval_fields:
        config = copy.deepcopy(config)  # bind_config may hand back the caller's config
        with config.unlocked():
            config.eval.update(eval_fields)
    configlib.validate(config)
    ckpt_step, variables = inference.restore_variables(config, workdir, step)
    splits = datasets.load_splits(config)
    return _Restored(config, overrides, ckpt_step, splits, inference.Scorer(config, variables))


def check_held_out(config, workdir, step: int | None = None) -> dict:
    """The label-free part of `evaluate` alone: restores a checkpoint, calibrates on the
    held-out normal images and their pasted copies, and writes `<workdir>/eval/held_out.json`
    (threshold, candidates, `held_out` check); the test split is not scored."""
    t0 = time.perf_counter()
    config, overrides, ckpt_step, splits, scorer = _restore(
        config, workdir, step, held_out_check=True
    )
    primary = jax.process_index() == 0
    total = splits["val"].num_images * (1 + scores_pastes(config))
    with console.progress(total, "held-out", disable=not primary) as bar:
        chosen = calibrate(scorer, splits, config, bar)
    result = {
        "held_out": chosen.held_out,
        "threshold": float(chosen.threshold),
        "threshold_candidates": {k: float(v) for k, v in chosen.candidates.items()},
        "checkpoint_step": int(ckpt_step),
        "num_held_out_images": int(splits["val"].num_images),
        "config_overrides": overrides,
        "eval_seconds": time.perf_counter() - t0,
    }
    if primary:
        path = workdir_lib.held_out_path(workdir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def evaluate(config, workdir, step: int | None = None) -> dict:
    """Restores a checkpoint, scores the test split, writes `<workdir>/eval/metrics.json`.

    The model is the run's own (`state.bind_config`): `config` (None: the run's config.json)
    may change the data location, eval.* and score.*; score fields that differ from the
    run's are recorded under `config_overrides`.
    """
    t0 = time.perf_counter()
    config, overrides, ckpt_step, splits, scorer = _restore(config, workdir, step)
    test = splits["test"]
    primary = jax.process_index() == 0  # every process scores; only the primary writes
    rule = config.eval.get("threshold_rule", "quantile")
    total = splits["val"].num_images * (1 + scores_pastes(config)) + test.num_images
    with console.progress(total, "evaluate", disable=not primary) as bar:
        chosen = calibrate(scorer, splits, config, bar)
        threshold, ref = chosen.threshold, chosen.ref
        out = workdir_lib.eval_dir(workdir)
        (out / workdir_lib.PICTURES).mkdir(parents=True, exist_ok=True)
        if primary:
            _save_reference(out / reference.FILE, ref)
        max_pictures = config.eval.max_pictures if primary else 0
        pictures_dir = out / workdir_lib.PICTURES
        acc, per_type = _score_test(scorer, test, threshold, ref, pictures_dir, max_pictures, bar)
    result = acc.result(threshold)
    precision, recall, _ = acc.pr_curve()
    pictures.save_pr_curve(
        out / workdir_lib.PR_CURVE, precision, recall, (result["precision"], result["recall"])
    )
    result.update(
        threshold=float(threshold),
        config_overrides=overrides,
        num_images=int(test.num_images),
        num_defective=int(np.sum(test.labels)),
        num_images_without_masks=int(np.sum(~test.mask_known())),
        checkpoint_step=int(ckpt_step),
        method=config.score.method,
        scales=list(config.score.scales),
        reference=chosen.reference_record,
        threshold_rule=calibration.describe(
            rule, config.eval.threshold_quantile, config.eval.get("paste_prior", 0.0)
        ),
        threshold_candidates={k: float(v) for k, v in chosen.candidates.items()},
        held_out=chosen.held_out,
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
    return result
