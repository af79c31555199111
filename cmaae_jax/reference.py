"""A per-position reference of normal anomaly maps (config `score.reference`), for aligned parts.

Where every image shows the same part in the same place (a fixture, a conveyor stop), the
auto-encoder's residual has a fixed structure: the part's edges, holes and markings are
reconstructed a little worse than flat surface in every image, normal or not. That structure
sets the label-free threshold and hides small defects. The reference is the mean of the valid
maps of normal training images, resampled to a common shape; a map minus the reference keeps
what differs from normal at that place. Images that are not aligned gain nothing from it (their
mean map is a blur of everything), so `auto` decides from normal images alone. Images of
different sizes cannot show a part in one fixed frame, so `auto` uses no reference for them
(on magnetic tile, whose images differ in size, a resampled reference cost AUPRO; RESULTS.md).
For images of one size,

    excess(maps) = quantile_q(pooled pixel scores) - mean(pooled pixel scores)

is the margin a defect must add to a typical normal pixel to cross the label-free threshold
(the same quantile q, `eval.threshold_quantile`). Subtracting a reference shifts each position
by a constant, so a defect's added score is unchanged; the reference is used when it lowers that
margin on the held-out normal maps (which never enter the reference). No defect label is read.
"""

import numpy as np
from PIL import Image

from cmaae_jax import calibration

REFERENCES = ("none", "mean", "auto")  # config score.reference
FILE = "reference.npy"  # in <workdir>/eval/ when evaluation chose `mean`


def resample(ref_HxW: np.ndarray, shape) -> np.ndarray:
    """`ref_HxW` bilinearly resampled to `shape` (h, w); returned as is when it already fits."""
    h, w = shape
    if ref_HxW.shape == (h, w):
        return ref_HxW
    img = Image.fromarray(np.asarray(ref_HxW, np.float32))
    return np.asarray(img.resize((w, h), Image.BILINEAR), np.float32)


def build(normal_maps) -> np.ndarray:
    """The per-position mean of valid normal maps (a list of [h_i, w_i]), each resampled to the
    shape of the first; float32 [h_0, w_0]."""
    if len(normal_maps) == 0:
        raise ValueError("no normal maps to build a reference from")
    shape = np.shape(normal_maps[0])
    total = np.zeros(shape, np.float64)
    for m in normal_maps:
        total += resample(np.asarray(m, np.float32), shape)
    return (total / len(normal_maps)).astype(np.float32)


def subtract(ref_HxW, maps):
    """Maps minus the reference: one map [h, w], a stack [N, h, w] or a list of maps."""
    if ref_HxW is None:
        return maps
    if isinstance(maps, (list, tuple)):
        return [subtract(ref_HxW, m) for m in maps]
    maps = np.asarray(maps, np.float32)
    return maps - resample(ref_HxW, maps.shape[-2:])


def excess(maps, quantile: float) -> float:
    """quantile - mean of the pooled pixel scores of `maps` (a list of maps of any shapes)."""
    pooled = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    q = calibration.threshold_from_normal(pooled, quantile)
    return float(q - pooled.astype(np.float64).mean())


def choose(setting: str, ref_HxW, held_out_maps, quantile: float, one_size: bool = True):
    """(use the reference?, record) for `setting` none | mean | auto. `one_size`: every map
    the reference was built from and every held-out map had the same shape. The record holds
    both excesses on the held-out normal maps when they were computed, and `one_size`."""
    if setting not in REFERENCES:
        raise ValueError(f"score.reference must be one of {REFERENCES}, got {setting!r}")
    record = {"setting": setting}
    if setting == "none":
        return False, {**record, "used": False}
    without = excess(held_out_maps, quantile)
    record.update(one_size=one_size, excess_none=without)
    if ref_HxW is None:  # auto on images of several sizes: evaluation built none
        return False, {**record, "used": False}
    with_ref = excess(subtract(ref_HxW, list(held_out_maps)), quantile)
    used = setting == "mean" or (one_size and with_ref < without)
    record.update(used=used, excess_mean=with_ref)
    return used, record


def save(path, ref_HxW) -> None:
    """Writes the reference atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(ref_HxW, np.float32))
    tmp.replace(path)


def load(path):
    """The saved reference, or None when there is none."""
    return np.load(path) if path.is_file() else None
