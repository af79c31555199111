"""From normal images alone: the per-position reference and the map method evaluation uses.

`score.reference` (reference.py) is decided on the held-out normal maps, and built from up to
`score.reference_images` training images' maps; `score.method=auto` then gives images found
aligned `score_options.ALIGNED_METHOD` (msfr_pixel, referred part by part) and the others raw MSFR.
The decision is always made on the plain method's maps (raw MSFR for `auto`), where the
alignment margin was measured. For `auto` on images of one size a single pass of the aligned
scorer with the raw MSFR map first (`scoring`'s `with_raw_msfr`) gives the maps for the
decision and for the parts' reference: each normal image is scored once, not twice. No defect
label is read.
"""

import numpy as np
from absl import logging

from cmaae_jax import datasets, inference, reference, score_options


def _reference_images(splits, config, setting):
    """(indices of the training images whose maps build the reference, None where none is
    built; whether they and the held-out images have one size) for `setting`
    (score.reference): up to `score.reference_images`, evenly spaced."""
    if setting == "none":
        return None, True
    train, val = splits["train"], splits["val"]
    count = min(train.num_images, config.score.get("reference_images", 64))
    if count == 0:
        raise datasets.DatasetError("score.reference needs training images; found none")
    picked = np.unique(np.linspace(0, train.num_images - 1, count).round().astype(int))
    sizes = np.concatenate([train.sizes[picked], val.sizes])
    one_size = len({tuple(int(v) for v in hw) for hw in sizes}) == 1
    if not one_size and setting == "auto":  # auto uses no reference for mixed sizes: skip it
        return None, one_size
    return picked, one_size


def _referred(held_out, train_maps, setting, quantile, one_size):
    """(the held-out maps referred, the reference or None, its record): `setting` decided
    (`reference.choose`) on the held-out maps, the reference built from `train_maps` (None:
    none built)."""
    ref = None if train_maps is None else reference.build(train_maps)
    kind, record = reference.choose(setting, ref, held_out, quantile, one_size)
    ref = reference.of_kind(ref, kind)
    return reference.apply(ref, held_out), ref, record


def normal_reference(scorer, splits, config, setting, bar=None):
    """`_referred` of `scorer`'s maps of the held-out images and of the reference images."""
    picked, one_size = _reference_images(splits, config, setting)
    held_out = inference.valid_maps(scorer, splits["val"], bar=bar)
    train = None if picked is None else inference.valid_maps(scorer, splits["train"], picked)
    return _referred(held_out, train, setting, config.eval.threshold_quantile, one_size)


def _warn_near_miss(record):
    """A warning where `auto` found the images unaligned by a narrow margin."""
    if reference.near_miss(record):
        logging.warning(
            "score.reference=auto found the images unaligned, but the mean of normal maps "
            "narrowed their tail by %.0f%% (aligned from %.0f%%): if they are aligned (the "
            "same part in the same place, light or play drifting), "
            "--config.score.method=msfr_pixel --config.score.reference=zscore forces the "
            "aligned map",
            100 * reference.narrowing(record),
            100 * reference.MIN_NARROWING,
        )


def _in_one_pass(config) -> bool:
    """Whether `score.method`'s aligned map comes in parts that a pass of raw MSFR maps can
    carry (`with_raw_msfr`): score.method=auto, one level, no normalize."""
    method_setting = config.score.get("method", "msfr")
    aligned = score_options.resolve_method(method_setting, aligned=True)
    plain = score_options.resolve_method(method_setting, aligned=False)
    return plain == "msfr" != aligned and score_options.referred_by_parts(aligned, config.score)


def _decided_in_one_pass(scorer, splits, config, picked, one_size, rescorer, bar=None):
    """`decide` where `_in_one_pass`: each held-out and reference image scored once, raw
    MSFR first (the alignment decided on it, as in two passes), then msfr_pixel's parts."""
    both = rescorer(score_options.ALIGNED_METHOD, components=True, with_raw_msfr=True)
    quantile, setting = config.eval.threshold_quantile, config.score.get("reference", "none")
    held_out = inference.valid_maps(both, splits["val"], bar=bar)
    train = inference.valid_maps(both, splits["train"], picked)
    plain, ref, record = _referred(
        [m[..., 0] for m in held_out], [m[..., 0] for m in train], setting, quantile, one_size
    )
    _warn_near_miss(record)
    if ref is None:
        return plain, None, record, "msfr", scorer
    kind = record["kind"]
    parts = [[m[..., 1:] for m in maps] for maps in (held_out, train)]
    held_out, ref, _ = _referred(*parts, kind, quantile, one_size)
    weights = list(reference.part_weights(kind))
    record = {**record, "components": list(score_options.COMPONENTS), "weights": weights}
    record["method"] = score_options.ALIGNED_METHOD
    return held_out, ref, record, score_options.ALIGNED_METHOD, both.without_raw_msfr()


def decide(scorer, splits, config, rescorer, bar=None):
    """(held-out maps referred, reference or None, its record, the map method, its scorer):
    score.reference and score.method=auto decided on the normal images."""
    setting = config.score.get("reference", "none")
    picked, one_size = _reference_images(splits, config, setting)
    if rescorer is not None and picked is not None and _in_one_pass(config):
        return _decided_in_one_pass(scorer, splits, config, picked, one_size, rescorer, bar)
    held_out, ref, record = normal_reference(scorer, splits, config, setting, bar)
    _warn_near_miss(record)
    method_setting = config.score.get("method", "msfr")
    method = score_options.resolve_method(method_setting, aligned=ref is not None)
    base = score_options.resolve_method(method_setting, aligned=False)
    components = ref is not None and score_options.referred_by_parts(method, config.score)
    if method != base or components:
        if rescorer is None:
            raise ValueError("aligned msfr_pixel maps: calibrate needs a rescorer")
        scorer = rescorer(method, components)
        held_out, ref, _ = normal_reference(scorer, splits, config, record["kind"])  # off the bar
        if components:
            weights = list(reference.part_weights(record["kind"]))
            record = {**record, "components": list(score_options.COMPONENTS), "weights": weights}
        record = {**record, "method": method} if method != base else record
    return held_out, ref, record, method, scorer
