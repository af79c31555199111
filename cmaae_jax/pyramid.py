"""The map at several image scales (config `score.pyramid`), combined into one.

The model sees 64-pixel windows, so a defect larger than a window (magnetic tile's breaks,
frays, uneven regions) looks like normal surface inside most of the windows that cover it.
The same model on the image shrunk by 2 sees twice the context per window. `score.pyramid`
lists the shrink factors scored (1, the image as it is, among them): each level's map
(before `score.normalize`) is resized back to the image and the levels are combined by their
geometric mean, which is scale-free (a level's map times c multiplies the result by a
constant per image) and keeps a pixel high only where it is high at every level. `(1,)` is
the paper's single scale. `train.crop_scales` trains on the same levels (`scaled_crops`): a
share of each step's images is shrunk as a level is before it is cropped.

A level: the canvas [B,H,W,3] (sides multiples of 64, the image at its top left) averaged over
f x f blocks, reflect-padded at the bottom and right to multiples of 64, mapped, cropped back
to H/f x W/f and resized bilinearly to H x W (half-pixel centres: a block's centre is
(i + 1/2) f - 1/2 in the full image, where the resize puts it).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from cmaae_jax import patches
from cmaae_jax.model import PATCH

Array = jax.Array

FACTORS = (1, 2, 4)  # shrink factors a pyramid may hold (64-multiple sides divide by them)
TINY = 1e-12  # floor of a map before its logarithm (maps are >= 0; a zero stays ~zero)


HELP = f"distinct shrink factors among {FACTORS}, 1 among them"  # what a pyramid must be


def is_pyramid(pyramid) -> bool:
    levels = tuple(pyramid)
    return len(set(levels)) == len(levels) and {1} <= set(levels) <= set(FACTORS)


def check_pyramid(pyramid) -> tuple[int, ...]:
    """The pyramid as a sorted tuple of its factors, or one clear error."""
    if not is_pyramid(pyramid):
        raise ValueError(f"score.pyramid must be {HELP}; got {pyramid}")
    return tuple(sorted(int(f) for f in pyramid))


def shrink(images_BxHxWx3: Array, factor: int) -> Array:
    """Mean over `factor` x `factor` blocks, reflect-padded at the bottom and right to
    multiples of the 64-pixel patch: [B, H', W', 3] with H' >= H / factor."""
    b, h, w, c = images_BxHxWx3.shape
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} does not divide by the pyramid factor {factor}")
    small = images_BxHxWx3.reshape(b, h // factor, factor, w // factor, factor, c).mean((2, 4))
    pad_h, pad_w = -small.shape[1] % PATCH, -small.shape[2] % PATCH
    return jnp.pad(small, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def grow(maps_Bxhxw: Array, factor: int, h: int, w: int) -> Array:
    """A level's map cropped to its image (h / factor x w / factor) and resized to h x w."""
    small = maps_Bxhxw[:, : h // factor, : w // factor]
    if factor == 1:
        return small
    return jax.image.resize(small, (small.shape[0], h, w), "bilinear", antialias=False)


def combine(maps_LxBxHxW: list[Array]) -> Array:
    """Geometric mean over the levels (each floored at `TINY`)."""
    if len(maps_LxBxHxW) == 1:
        return maps_LxBxHxW[0]
    chex.assert_equal_shape(maps_LxBxHxW)
    logs = [jnp.log(jnp.maximum(m.astype(jnp.float32), TINY)) for m in maps_LxBxHxW]
    return jnp.exp(sum(logs) / len(logs))


def pyramid_maps(map_fn, images_BxHxWx3: Array, pyramid):
    """`map_fn` (images [B,h,w,3] -> (maps [B,h,w], extra)) at every level of `pyramid`:
    (the levels' maps combined, the full-scale level's `extra`)."""
    _, h, w, _ = images_BxHxWx3.shape
    full_maps, extra = map_fn(images_BxHxWx3)
    levels = [full_maps]
    for factor in check_pyramid(pyramid)[1:]:
        levels.append(grow(map_fn(shrink(images_BxHxWx3, factor))[0], factor, h, w))
    return combine(levels), extra


def shrink_mask(mask_BxHxW: Array, factor: int) -> Array:
    """A bool mask at a level: True where any pixel of the f x f block is, padded as `shrink`."""
    return shrink(mask_BxHxW[..., None].astype(jnp.float32), factor)[..., 0] > 0


def scaled_crops(key, inp_NxHxWx3: Array, crops_per_image: int, *aligned, scales=(1,), **kw):
    """`patches.random_crops` of 64-pixel crops with the images split over image scales
    (config `train.crop_scales`): a random share 1/len(scales) of the N images (`jax.random`
    permutation; `np.array_split` sizes) is shrunk by each factor as a pyramid level is
    (`shrink`; masks by `shrink_mask`) and cropped there, so the windows a pyramid level
    scores are in the training distribution. `aligned` arrays ([N,H,W,3] float, or [N,H,W]
    bool masks) follow their image; `limits_Nx2` (valid sizes) is divided by the factor
    (floored) and `focus` (mask, count) uses the shrunk mask. `scales=(1,)` is exactly
    `patches.random_crops`. Returns its tuple, the crops of the scales in `scales`' order."""
    scales = check_pyramid(scales)
    if scales == (1,):
        return patches.random_crops(key, inp_NxHxWx3, crops_per_image, PATCH, *aligned, **kw)
    n = inp_NxHxWx3.shape[0]
    if n < len(scales):
        raise ValueError(f"{n} images cannot be split over the crop scales {scales}")
    key_order, key_crops = jax.random.split(key)
    order = jax.random.permutation(key_order, n)
    limits, focus = kw.pop("limits_Nx2", None), kw.pop("focus", None)
    parts = []
    for factor, rows in zip(scales, np.array_split(np.arange(n), len(scales)), strict=True):
        pick = order[rows]
        arrays = [a[pick] for a in (inp_NxHxWx3, *aligned)]
        if factor > 1:  # the image as loaded needs no block means
            arrays = [shrink(a, factor) if a.ndim == 4 else shrink_mask(a, factor) for a in arrays]
        part_kw = dict(kw)
        if limits is not None:
            part_kw["limits_Nx2"] = jnp.asarray(limits, jnp.int32)[pick] // factor
        if focus is not None:
            part_kw["focus"] = (shrink_mask(focus[0][pick], factor), focus[1])
        k = jax.random.fold_in(key_crops, factor)
        parts.append(
            patches.random_crops(k, arrays[0], crops_per_image, PATCH, *arrays[1:], **part_kw)
        )
    return tuple(jnp.concatenate(group) for group in zip(*parts, strict=True))
