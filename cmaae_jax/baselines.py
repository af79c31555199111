"""Non-learned reference maps, scored exactly like a trained model (same data, threshold rule
and metrics), so a study can say how far a model is above what needs no training at all.

* `local_contrast`: |I - G_sigma * I|, the grey level's departure from its Gaussian-blurred
  neighbourhood (sigma in pixels of the resized image): finds small dark/bright spots and
  thin lines, blind to large smooth defects.
* `mean_image`: |I - mean of the training images|, pixel by pixel: needs aligned images.

Both work on the grey level (mean over RGB) in [0, 1].
"""

import numpy as np
import scipy.ndimage

from cmaae_jax import calibration, metrics

METHODS = ("local_contrast", "mean_image")


def grey(images_NxHxWx3_u8) -> np.ndarray:
    return np.asarray(images_NxHxWx3_u8, np.float32).mean(-1) / 255.0


def local_contrast(images_NxHxWx3_u8, sigma: float) -> np.ndarray:
    g = grey(images_NxHxWx3_u8)
    blurred = np.stack([scipy.ndimage.gaussian_filter(im, sigma, mode="reflect") for im in g])
    return np.abs(g - blurred)


def mean_image(images_NxHxWx3_u8, train_images_NxHxWx3_u8) -> np.ndarray:
    return np.abs(grey(images_NxHxWx3_u8) - grey(train_images_NxHxWx3_u8).mean(0))


def maps(method: str, images, train_images, sigma: float) -> np.ndarray:
    if method == "local_contrast":
        return local_contrast(images, sigma)
    if method == "mean_image":
        return mean_image(images, train_images)
    raise ValueError(f"baseline method must be one of {METHODS}, got {method!r}")


def evaluate(splits, method: str, sigma: float = 8.0, quantile: float = 0.999) -> dict:
    """Pooled and per-defect-type metrics of one baseline on `datasets.load_splits` output."""
    train, val, test = splits["train"].images, splits["val"], splits["test"]
    threshold = calibration.threshold_from_normal(maps(method, val.images, train, sigma), quantile)
    test_maps = maps(method, test.images, train, sigma)
    result = metrics.evaluate_maps(test_maps, test.masks, threshold)
    per_type = metrics.PerTypeAccumulator(test.defect_types, test.labels, (threshold,))
    per_type.update(test_maps, test.masks, test.defect_types, test.labels)
    result["per_type"] = per_type.result(threshold)
    return result
