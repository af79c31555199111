"""Non-learned reference maps, scored like a trained model (same data, valid regions and
metrics), so a study can say how far a model is above what needs no training at all. Their
label-free threshold is a trained model's rule: the quantile of held-out normal pixels, or
(given a config whose `eval.threshold_rule` is `pastes`, `geomean` or `auto`) that rule on the
same held-out images with the same pastes (`calibration.pasted_split`).

* `local_contrast`: |I - G_sigma * I|, the grey level's departure from its Gaussian-blurred
  neighbourhood (sigma in pixels of the resized image): finds small dark/bright spots and
  thin lines, blind to large smooth defects.
* `mean_image`: |I - mean of the training images|, pixel by pixel: needs aligned images.
* `mean_image_z`: the same over the training images' spread at that pixel, sqrt(var + median
  var) (a variation model, as industrial inspection of aligned parts uses it: the part's edges
  and markings, which vary from image to image, count less than flat surface).

Both work on the grey level (mean over RGB) in [0, 1], on each image's valid region
(`data.resize=keep_aspect` pads images; the padding is cropped off first and never counts).
With images of different sizes, `mean_image` averages the training images resized to the
largest valid size and resizes that mean to each image's size (bilinear).
"""

import numpy as np
import scipy.ndimage
from PIL import Image

from cmaae_jax import calibration, image_score, metrics, reference

METHODS = ("local_contrast", "mean_image", "mean_image_z")
ZSCORED = ("mean_image_z",)  # maps z-scored per position (`eval.threshold_rule=auto`)


def grey(images_NxHxWx3_u8) -> np.ndarray:
    return np.asarray(images_NxHxWx3_u8, np.float32).mean(-1) / 255.0


def local_contrast(images_NxHxWx3_u8, sigma: float) -> np.ndarray:
    g = grey(images_NxHxWx3_u8)
    blurred = np.stack([scipy.ndimage.gaussian_filter(im, sigma, mode="reflect") for im in g])
    return np.abs(g - blurred)


def mean_image(images_NxHxWx3_u8, train_images_NxHxWx3_u8) -> np.ndarray:
    return np.abs(grey(images_NxHxWx3_u8) - grey(train_images_NxHxWx3_u8).mean(0))


def spread(greys_NxHxW) -> np.ndarray:
    """The per-position spread of a stack of images (`reference.spread` of their variance)."""
    return reference.spread(np.var(np.asarray(greys_NxHxW, np.float64), axis=0)).astype(np.float32)


def mean_image_z(images_NxHxWx3_u8, train_images_NxHxWx3_u8) -> np.ndarray:
    train = grey(train_images_NxHxWx3_u8)
    return mean_image(images_NxHxWx3_u8, train_images_NxHxWx3_u8) / spread(train)


def maps(method: str, images, train_images, sigma: float) -> np.ndarray:
    if method == "local_contrast":
        return local_contrast(images, sigma)
    if method == "mean_image":
        return mean_image(images, train_images)
    if method == "mean_image_z":
        return mean_image_z(images, train_images)
    raise ValueError(f"baseline method must be one of {METHODS}, got {method!r}")


def _resize(grey_HxW, hw) -> np.ndarray:
    """Bilinear resize of a float32 grey image to (h, w)."""
    if grey_HxW.shape == tuple(hw):
        return grey_HxW
    img = Image.fromarray(np.asarray(grey_HxW, np.float32))  # mode F
    return np.asarray(img.resize((int(hw[1]), int(hw[0])), Image.BILINEAR), np.float32)


def _templates(train):
    """(mean, spread) of the grey training images' valid regions, resized to the largest
    valid size."""
    hw = tuple(int(v) for v in train.sizes.max(axis=0))
    greys = [_resize(grey(train.valid_map(i, im)), hw) for i, im in enumerate(train.images)]
    return np.mean(greys, axis=0, dtype=np.float32), spread(greys)


def split_maps(method: str, split, train, sigma: float) -> list:
    """Baseline maps of every image of a Split, each cropped to its valid region [h_i, w_i]."""
    if method not in METHODS:
        raise ValueError(f"baseline method must be one of {METHODS}, got {method!r}")
    if split.stacked and train.stacked:  # square mode: whole arrays, as before
        full = maps(method, split.images, train.images, sigma)
        return [split.valid_map(i, m) for i, m in enumerate(full)]
    greys = [grey(split.valid_map(i, im)) for i, im in enumerate(split.images)]
    if method == "local_contrast":
        return [np.abs(g - scipy.ndimage.gaussian_filter(g, sigma, mode="reflect")) for g in greys]
    mean, sd = _templates(train)
    sd = sd if method == "mean_image_z" else np.ones_like(sd)
    return [np.abs(g - _resize(mean, g.shape)) / _resize(sd, g.shape) for g in greys]


def label_free_threshold(splits, method, sigma: float, quantile: float, config=None):
    """(threshold, rims) of a baseline: the `quantile` of its held-out normal pixel scores, or
    the `pastes` or `geomean` rule when `config.eval.threshold_rule` says so (`auto`: geomean
    for a map z-scored per position, `ZSCORED`, pastes for the others); `rims` as evaluation's
    (`calibration.rims`), the held-out maps and pastes without `threshold_rim`'s rim."""
    train, val = splits["train"], splits["val"]
    normal_maps = split_maps(method, val, train, sigma)
    rims = {"image_rim": 0, "threshold_rim": 0}
    if config is not None:
        rims = calibration.rims(normal_maps, config)
    left_out = rims["threshold_rim"]
    normal_maps = [image_score.inner(m, left_out) for m in normal_maps]
    pooled = [m.ravel() for m in normal_maps]
    floor = calibration.threshold_from_normal(
        np.concatenate(pooled) if pooled else np.zeros(0, np.float32), quantile
    )
    rule = "quantile" if config is None else config.eval.get("threshold_rule", "quantile")
    rule = calibration.resolve_rule(rule, zscored=method in ZSCORED)
    if rule not in calibration.PASTE_RULES:
        return floor, rims
    prior = config.eval.get("paste_prior", 0.0)
    pasted, masks = calibration.pasted_split(val, config)
    pasted = [split_maps(method, pasted, train, sigma), masks]
    pasted = [[image_score.inner(m, left_out) for m in x] for x in pasted]
    best = calibration.paste_threshold(normal_maps, *pasted, prior)
    return calibration.rule_threshold(rule, floor, best, prior), rims


def evaluate(splits, method: str, sigma: float = 8.0, quantile: float = 0.999, config=None):
    """Pooled and per-defect-type metrics of one baseline on `datasets.load_splits` output;
    `config` (optional) chooses the threshold rule and the image score
    (`label_free_threshold`)."""
    train, test = splits["train"], splits["test"]
    threshold, rims = label_free_threshold(splits, method, sigma, quantile, config)
    how, rim = "max" if config is None else config.eval.get("image_score", "max"), rims["image_rim"]
    acc = metrics.PixelAccumulator(thresholds=(threshold,), image_score=how, image_rim=rim)
    per_type = metrics.PerTypeAccumulator(
        test.defect_types, test.labels, (threshold,), image_score=how, image_rim=rim
    )
    test_maps = split_maps(method, test, train, sigma)
    known = test.mask_known()  # defective images without a mask: image metrics only
    for pos, maps_g, masks_g in test.valid_groups(range(test.num_images), test_maps):
        acc.update(maps_g, masks_g, test.labels[pos], known[pos])
        types = [test.defect_types[i] for i in pos]
        per_type.update(maps_g, masks_g, types, test.labels[pos], known[pos])
    result = acc.result(threshold)
    result["per_type"] = per_type.result(threshold)
    result.update(rims)
    return result
