"""The map at several image scales (config `score.pyramid`), combined into one.

The model sees 64-pixel windows, so a defect larger than a window (magnetic tile's breaks,
frays, uneven regions) looks like normal surface inside most of the windows that cover it.
The same model on the image shrunk by 2 sees twice the context per window. `score.pyramid`
lists the shrink factors scored (1, the image as it is, among them): each level's map
(before `score.normalize`) is resized back to the image and the levels are combined by their
geometric mean, which is scale-free (a level's map times c multiplies the result by a
constant per image) and keeps a pixel high only where it is high at every level. `(1,)` is
the paper's single scale.

A level: the canvas [B,H,W,3] (sides multiples of 64, the image at its top left) averaged over
f x f blocks, reflect-padded at the bottom and right to multiples of 64, mapped, cropped back
to H/f x W/f and resized bilinearly to H x W (half-pixel centres: a block's centre is
(i + 1/2) f - 1/2 in the full image, where the resize puts it).
"""

import chex
import jax
import jax.numpy as jnp

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
