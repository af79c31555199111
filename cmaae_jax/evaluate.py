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
    alignment,
    calibration,
    configlib,
    console,
    datasets,
    image_score,
    inference,
    metrics,
    pictures,
    reference,
    score_options,
)
from cmaae_jax import state as state_lib
from cmaae_jax import workdir as workdir_lib


def pasted_held_out(scorer, val, config, bar=None):
    """(valid maps, paste masks) of the held-out images with GAAGA pastes
    (`calibration.pasted_split`)."""
    pasted, masks = calibration.pasted_split(val, config)
    return inference.valid_maps(scorer, pasted, bar=bar), masks


def scores_pastes(config) -> bool:
    """Whether calibration scores the held-out images' pasted copies (the `pastes` rule or
    `eval.held_out_check`)."""
    rule = config.eval.get("threshold_rule", "quantile")
    return rule in calibration.PASTE_RULES or config.eval.get("held_out_check", False)


class Calibration(NamedTuple):
    """What `calibrate` chose from normal images: the threshold, the reference (None: none
    used) and its record, the rules' candidate thresholds by name (the quantile's; where
    the pastes are scored also the pastes' best-F1 one, before the floor, and `geomean`'s;
    `head`'s alone with that rule), the held-out check
    (`calibration.held_out_check`; empty without `eval.held_out_check`), the map method
    and scorer they belong to (`score.method=auto` resolved), the threshold rule used
    (`eval.threshold_rule=auto` resolved) and the rims left out of image scores and of the
    threshold rule (`calibration.rims`)."""

    threshold: float
    ref: np.ndarray | None
    reference_record: dict
    candidates: dict
    held_out: dict
    method: str
    scorer: object
    rule: str
    rims: dict


def calibrate(scorer, splits, config, bar=None, rescorer=None) -> Calibration:
    """The reference (`score.reference`) and the label-free threshold from the held-out val
    images and up to `score.reference_images` training images; no defect label.
    `score.method=auto`: where a reference is applied, `rescorer(method, components,
    with_raw_msfr=False)` gives the scorer of `score_options.ALIGNED_METHOD`, whose maps then
    make the reference (of the kind decided on raw MSFR maps) and the threshold; msfr_pixel's maps
    (`auto`'s or asked for) come in parts with a reference of each
    (`score_options.referred_by_parts`, reference.py). For `auto` on images of one size a single
    pass of the aligned scorer with the raw MSFR map first serves both (`alignment.decide`).
    `eval.threshold_rim`: the rules see the held-out maps (and pastes) without their rim."""
    if splits["val"].num_images == 0:
        raise datasets.DatasetError(
            "no held-out normal images to calibrate the threshold: set eval.val_fraction > 0"
        )
    held_out, ref, record, method, scorer = alignment.decide(scorer, splits, config, rescorer, bar)
    rims = calibration.rims(held_out, config)
    left_out = rims["threshold_rim"]
    zscored = ref is not None and record.get("kind") == "zscore"
    rule = calibration.resolve_rule(config.eval.get("threshold_rule", "quantile"), zscored)
    quantile = config.eval.threshold_quantile
    normal = [image_score.inner(m, left_out) for m in held_out]
    threshold = calibration.label_free_threshold(
        rule, np.concatenate([m.ravel() for m in normal]), quantile
    )
    candidates = {rule if rule == "head" else "quantile": threshold}
    check = {}
    if not scores_pastes(config):
        return Calibration(threshold, ref, record, candidates, check, method, scorer, rule, rims)
    maps, masks = pasted_held_out(scorer, splits["val"], config, bar)
    maps = reference.apply(ref, maps)
    if config.eval.get("held_out_check", False):
        check = calibration.held_out_check(held_out, maps, masks)
        logging.info("held-out check (pastes on held-out normal images): %s", check)
    if rule != "head":  # every rule's candidate where the pastes are scored
        prior = config.eval.get("paste_prior", 0.0)
        pasted = [[image_score.inner(m, left_out) for m in x] for x in (maps, masks)]
        best = calibration.paste_threshold(normal, *pasted, prior)
        geomean = calibration.rule_threshold("geomean", threshold, best, prior)
        candidates.update(pastes=best, geomean=geomean)
        logging.info("threshold candidates (paste prior %g): %s", prior, candidates)
        threshold = calibration.rule_threshold(rule, threshold, best, prior)
    return Calibration(threshold, ref, record, candidates, check, method, scorer, rule, rims)


def _score_test(
    scorer, test, thresholds, ref, picture_dir, max_pictures, bar=None, image=("max", 0)
):
    """Scores the test split into (pooled, per-type) accumulators that count the pixels at
    each of `thresholds` exactly and score images by `image` (image score, rim), and writes
    up to `max_pictures` overlays of defective images at the first; maps, masks and images are
    cropped to each image's valid region first (keep_aspect padding never counts). Image
    labels are the split's; images without a mask count in image metrics only."""
    threshold = thresholds[0]
    how, rim = image
    acc = metrics.PixelAccumulator(thresholds=thresholds, image_score=how, image_rim=rim)
    per_type = metrics.PerTypeAccumulator(
        test.defect_types, test.labels, (threshold,), image_score=how, image_rim=rim
    )
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


class _Restored(NamedTuple):
    """A run bound to its own model and restored for scoring (`_restore`); `rescore`: its
    `inference.rescorer`."""

    config: object
    overrides: dict
    step: int
    splits: dict
    scorer: inference.Scorer
    rescore: object


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
    scorer = inference.Scorer(config, variables)
    return _Restored(
        config, overrides, ckpt_step, splits, scorer, inference.rescorer(config, variables)
    )


def _with_method(overrides: dict, setting: str, method: str) -> dict:
    """The score overrides with the map method used: where it is not what the trained
    config's method gives by itself (`score.method=auto` resolved for aligned images, or a
    command line's change), [trained, used], which predict and export read back."""
    key = f"{state_lib.SCORE_SECTION}.method"
    trained = overrides.get(key, [setting])[0]
    out = {k: v for k, v in overrides.items() if k != key}
    if method != score_options.resolve_method(trained, aligned=False):
        out[key] = [trained, method]
    return out


def check_held_out(config, workdir, step: int | None = None) -> dict:
    """The label-free part of `evaluate` alone: restores a checkpoint, calibrates on the
    held-out normal images and their pasted copies, and writes `<workdir>/eval/held_out.json`
    (threshold, candidates, `held_out` check); the test split is not scored."""
    t0 = time.perf_counter()
    config, overrides, ckpt_step, splits, scorer, rescore = _restore(
        config, workdir, step, held_out_check=True
    )
    primary = jax.process_index() == 0
    total = splits["val"].num_images * (1 + scores_pastes(config))
    with console.progress(total, "held-out", disable=not primary) as bar:
        chosen = calibrate(scorer, splits, config, bar, rescore)
    result = {
        "held_out": chosen.held_out,
        "threshold": float(chosen.threshold),
        "threshold_candidates": {k: float(v) for k, v in chosen.candidates.items()},
        "checkpoint_step": int(ckpt_step),
        "num_held_out_images": int(splits["val"].num_images),
        "config_overrides": _with_method(overrides, config.score.method, chosen.method),
        "method": chosen.method,
        **chosen.rims,
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
    config, overrides, ckpt_step, splits, scorer, rescore = _restore(config, workdir, step)
    test = splits["test"]
    primary = jax.process_index() == 0  # every process scores; only the primary writes
    total = splits["val"].num_images * (1 + scores_pastes(config)) + test.num_images
    with console.progress(total, "evaluate", disable=not primary) as bar:
        chosen = calibrate(scorer, splits, config, bar, rescore)
        threshold, ref, scorer = chosen.threshold, chosen.ref, chosen.scorer
        out = workdir_lib.eval_dir(workdir)
        (out / workdir_lib.PICTURES).mkdir(parents=True, exist_ok=True)
        if primary:
            reference.save(out / reference.FILE, ref)
        max_pictures = config.eval.max_pictures if primary else 0
        pictures_dir = out / workdir_lib.PICTURES
        thresholds = (threshold, *chosen.candidates.values())
        how = config.eval.get("image_score", "max")
        image = (how, chosen.rims["image_rim"])
        acc, per_type = _score_test(
            scorer, test, thresholds, ref, pictures_dir, max_pictures, bar, image
        )
    result = acc.result(threshold)
    precision, recall, _ = acc.pr_curve()
    pictures.save_pr_curve(
        out / workdir_lib.PR_CURVE, precision, recall, (result["precision"], result["recall"])
    )
    result.update(
        threshold=float(threshold),
        config_overrides=_with_method(overrides, config.score.method, chosen.method),
        num_images=int(test.num_images),
        num_defective=int(np.sum(test.labels)),
        num_images_without_masks=int(np.sum(~test.mask_known())),
        checkpoint_step=int(ckpt_step),
        method=chosen.method,
        scales=list(config.score.scales),
        reference=chosen.reference_record,
        threshold_rule=calibration.describe(
            chosen.rule, config.eval.threshold_quantile, config.eval.get("paste_prior", 0.0)
        ),
        threshold_candidates={k: float(v) for k, v in chosen.candidates.items()},
        image_score=how,
        **chosen.rims,
        # what each candidate would have given (pooled; reported, never used to choose)
        threshold_candidates_f1={
            k: acc.result(v)["pixel_f1"] for k, v in chosen.candidates.items()
        },
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
