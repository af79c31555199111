"""Anomaly maps over their own level (config `score.normalize`), from each map alone.

A residual grows with what the image shows, not only with what is wrong in it: magnetic tile's
brightest exposures score ~10x the darkest, and parts of a normal image (a textured patch, a
bright band) score high as a whole. A defect is a local excess. Every option divides the map
[B,H,W] by a level of the same map; none reads another image or a label.

* `none`: the map as it is.
* `median`: m / median(m), the image's typical residual (per-image level).
* `local_mean`: m / (box mean of m over `LOCAL_MEAN_PX` + median(m)): also divides out regions
  that are high as a whole. A defect's own area is part of its box, so large defects lose
  part of their excess; small and thin ones keep it.
* `local_median`: m / (box median of m + median(m)), the median taken over
  `LOCAL_MEDIAN_CELLS` x `LOCAL_MEDIAN_CELLS` cells of `LOCAL_MEDIAN_CELL` px (the map
  mean-pooled, then resized back bilinearly): a defect covering less than half of the box does
  not move the median at its centre.

Medians on the device are exact selections (`median_last_axis`): XLA:CPU's `jnp.median` sorts,
~16 ms of a 256 x 256 map's ~200 ms where the selection costs about what numpy's does on the
host (BENCHMARKS.md); `sort` stays for the ONNX export, whose opset has no bit cast.

The median in the denominator keeps the division finite where the local level is near zero,
and makes every option scale-free: a map times c gives the same normalised map. Boxes reflect
at the sides (half-sample symmetric, as scipy.ndimage's `reflect`). Both boxes are tied to the
model's 64 px window (one window, two windows), not tuned on test masks (RESULTS.md).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cmaae_jax.model import PATCH

Array = jax.Array

NORMALIZE = ("none", "median", "local_mean", "local_median")  # config score.normalize
LOCAL_MEAN_PX = PATCH + 1  # side of the `local_mean` box (odd: centred on its pixel)
LOCAL_MEDIAN_CELL = 8  # `local_median`: the map is mean-pooled in cells of this side (px)
LOCAL_MEDIAN_CELLS = 2 * PATCH // LOCAL_MEDIAN_CELL + 1  # box side in cells (17: 136 px)
EPS = 1e-12
MEDIANS = ("select", "sort")  # device median: exact radix selection | jnp.median (sorts)
_SIGN = np.uint32(1 << 31)


def check_normalize(normalize: str):
    if normalize not in NORMALIZE:
        raise ValueError(f"score.normalize must be one of {NORMALIZE}, got {normalize!r}")


def _sortable_keys(x: Array) -> Array:
    """float32 -> uint32 keys in the same order (IEEE bits, negatives' flipped; -0 < +0)."""
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)


def _from_keys(keys: Array) -> Array:
    bits = jnp.where(keys >= _SIGN, keys & ~_SIGN, ~keys)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _kth_key(keys_RxN: Array, k: int) -> Array:
    """The k-th smallest key of each row (0-based), bit by bit from the top: a bit is set when
    at most k keys lie below the prefix with it set. 32 counting passes, no sort."""
    found_R = jnp.zeros(keys_RxN.shape[:1], jnp.uint32)
    for bit in range(31, -1, -1):
        candidate_R = found_R | np.uint32(1 << bit)
        below_R = jnp.sum(keys_RxN < candidate_R[:, None], axis=1)
        found_R = jnp.where(below_R <= k, candidate_R, found_R)
    return found_R


def median_last_axis(x: Array, how: str = "select") -> Array:
    """The median over the last axis (finite values), as `jnp.median`: the middle value, or
    the mean of the two middle ones. `how`: `select` (exact, by `_kth_key`) or `sort`."""
    if how not in MEDIANS:
        raise ValueError(f"median must be one of {MEDIANS}, got {how!r}")
    if how == "sort":
        return jnp.median(x, axis=-1)
    n = x.shape[-1]
    keys_RxN = _sortable_keys(x).reshape(-1, n)
    k = (n - 1) // 2
    low_R = _kth_key(keys_RxN, k)
    if n % 2:
        return _from_keys(low_R).reshape(x.shape[:-1])
    at_most_low_R = jnp.sum(keys_RxN <= low_R[:, None], axis=1)
    next_R = jnp.min(jnp.where(keys_RxN > low_R[:, None], keys_RxN, ~np.uint32(0)), axis=1)
    high_R = jnp.where(at_most_low_R >= k + 2, low_R, next_R)
    middle_R = 0.5 * (_from_keys(low_R) + _from_keys(high_R))
    return middle_R.reshape(x.shape[:-1])


def _reflect(maps_BxHxW: Array, half: int) -> Array:
    return jnp.pad(maps_BxHxW, ((0, 0), (half, half), (half, half)), mode="symmetric")


def box_mean(maps_BxHxW: Array, side: int) -> Array:
    """Mean over the `side` x `side` box centred on each pixel (odd `side`), sides reflected;
    two one-axis window sums (O(side) work per pixel, not O(side^2))."""
    if side % 2 != 1:
        raise ValueError(f"box side must be odd, got {side}")
    padded = _reflect(maps_BxHxW.astype(jnp.float32), side // 2)
    rows = lax.reduce_window(padded, 0.0, lax.add, (1, side, 1), (1, 1, 1), "VALID")
    sums = lax.reduce_window(rows, 0.0, lax.add, (1, 1, side), (1, 1, 1), "VALID")
    return sums / float(side * side)


def cell_median(
    maps_BxHxW: Array, cells: int = LOCAL_MEDIAN_CELLS, cell=LOCAL_MEDIAN_CELL, median="select"
):
    """Median over a `cells` x `cells` box of `cell`-px cells around each pixel: the map is
    mean-pooled in cells (H and W multiples of `cell`), the median taken per cell over its box
    (sides reflected), and the cell medians resized back to H x W bilinearly (half-pixel
    centres, `msfr.resize_bilinear`'s convention)."""
    b, h, w = maps_BxHxW.shape
    if h % cell or w % cell or cells % 2 != 1:
        raise ValueError(f"map {h}x{w} must be whole {cell}-px cells; box {cells} must be odd")
    pooled = maps_BxHxW.astype(jnp.float32).reshape(b, h // cell, cell, w // cell, cell)
    pooled_Bxhxw = pooled.mean(axis=(2, 4))
    padded = _reflect(pooled_Bxhxw, cells // 2)
    hc, wc = h // cell, w // cell
    shifted_BxhxwxK = jnp.stack(
        [padded[:, i : i + hc, j : j + wc] for i in range(cells) for j in range(cells)], -1
    )
    around_Bxhxw = median_last_axis(shifted_BxhxwxK, median)
    return jax.image.resize(around_Bxhxw, (b, h, w), "bilinear", antialias=False)


def normalize_maps(maps_BxHxW: Array, normalize: str, median: str = "select") -> Array:
    """The maps over their level, by `normalize` among `NORMALIZE` (module docstring); `median`
    among `MEDIANS`."""
    check_normalize(normalize)
    if normalize == "none":
        return maps_BxHxW
    chex.assert_rank(maps_BxHxW, 3)
    b = maps_BxHxW.shape[0]
    median_Bx1x1 = median_last_axis(maps_BxHxW.reshape(b, -1), median)[:, None, None]
    if normalize == "median":
        level = median_Bx1x1
    elif normalize == "local_mean":
        level = box_mean(maps_BxHxW, LOCAL_MEAN_PX) + median_Bx1x1
    else:
        level = cell_median(maps_BxHxW, median=median) + median_Bx1x1
    return maps_BxHxW / (level + EPS)


def over_median_on_host(maps) -> np.ndarray:
    """Maps [N, H, W] or maps with parts [N, H, W, K], each map (each part) over its image's
    median: `normalize_maps`' `median` in numpy, for the host, where `inference.Scorer` divides
    the maps it hands out whole (the device's selection costs about as much; BENCHMARKS.md)."""
    maps = np.asarray(maps, np.float32)
    planes = maps if maps.ndim == 4 else maps[..., None]
    n, k = planes.shape[0], planes.shape[-1]
    median_Nx1x1xK = np.median(planes.reshape(n, -1, k), axis=1)[:, None, None, :]
    out = planes / (median_Nx1x1xK + np.float32(EPS))
    return out if maps.ndim == 4 else out[..., 0]
