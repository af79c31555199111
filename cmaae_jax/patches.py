"""Patches: the non-overlapping test-time grid, its inverse, and aligned random training crops.

The model sees 64x64 patches (SPEC section 1). At test time an image is cut into the
non-overlapping grid, row-major per image (the order of `split_patches` in the PyTorch
reference), the patches are reconstructed in one batch and stitched back with `from_grid`.
For training, `random_crops` takes uniformly placed crops and applies the same positions to
any aligned arrays (clean target, mask), so input and target never drift apart.
"""

import chex
import jax

Array = jax.Array


def _check_divisible(h: int, w: int, p: int):
    if h % p or w % p:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of the patch size {p}: resize the images "
            f"(data.image_size) to a multiple of {p}"
        )


def to_grid(images_BxHxWxC: Array, p: int = 64) -> Array:
    """Cuts each image into its (H/p) x (W/p) grid of p x p patches.

    Args:
      images_BxHxWxC: images, channels last.
      p: patch side; H and W must be multiples of it.

    Returns:
      [B*(H/p)*(W/p), p, p, C]: patches of image 0 first, each image's patches row-major
      (left to right, then top to bottom).

    Raises:
      ValueError: if H or W is not a multiple of p.
    """
    b, h, w, c = images_BxHxWxC.shape
    _check_divisible(h, w, p)
    x = images_BxHxWxC.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, p, p, c)


def from_grid(patches_NxPxPxC: Array, b: int, h: int, w: int) -> Array:
    """Stitches grid patches back into [b, h, w, C]; the exact inverse of `to_grid`."""
    _, p, _, c = patches_NxPxPxC.shape
    _check_divisible(h, w, p)
    chex.assert_shape(patches_NxPxPxC, (b * (h // p) * (w // p), p, p, c))
    x = patches_NxPxPxC.reshape(b, h // p, w // p, p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _crop(image_HxWx___: Array, y: Array, x: Array, p: int) -> Array:
    """One p x p crop at (y, x) of an [H, W, ...] array (trailing axes kept whole)."""
    start = (y, x) + (0,) * (image_HxWx___.ndim - 2)
    return jax.lax.dynamic_slice(image_HxWx___, start, (p, p) + image_HxWx___.shape[2:])


def random_crops(
    key: Array, images_NxHxWxC: Array, crops_per_image: int, p: int = 64, *others: Array
) -> tuple[Array, ...]:
    """`crops_per_image` uniformly placed p x p crops of every image, the same ones of `others`.

    Top-left corners are drawn uniformly over all valid positions (0..H-p, 0..W-p),
    independently for each crop. jit-able with `crops_per_image` and `p` static.

    Args:
      key: PRNG key.
      images_NxHxWxC: source images.
      crops_per_image: crops taken from each image.
      p: crop side.
      *others: arrays aligned with the images, [N, H, W, ...] (e.g. the clean target
        [N,H,W,C] or a mask [N,H,W]); cropped at the same positions.

    Returns:
      A tuple (crops of images [N*crops_per_image, p, p, C], then one entry per array in
      `others`, [N*crops_per_image, p, p, ...]); the crops of image n are rows
      n*crops_per_image ... (n+1)*crops_per_image - 1.
    """
    n, h, w = images_NxHxWxC.shape[:3]
    if p > h or p > w:
        raise ValueError(f"crop size {p} is larger than the images ({h}x{w})")
    for other in others:
        if other.shape[:3] != (n, h, w):
            raise ValueError(f"aligned array of shape {other.shape} does not match {(n, h, w)}")
    key_y, key_x = jax.random.split(key)
    ys = jax.random.randint(key_y, (n, crops_per_image), 0, h - p + 1)
    xs = jax.random.randint(key_x, (n, crops_per_image), 0, w - p + 1)
    # Outer vmap over images, inner over the crops of one image.
    crop_all = jax.vmap(jax.vmap(_crop, in_axes=(None, 0, 0, None)), in_axes=(0, 0, 0, None))
    out = []
    for arr in (images_NxHxWxC, *others):
        crops = crop_all(arr, ys, xs, p)
        out.append(crops.reshape((n * crops_per_image, p, p) + arr.shape[3:]))
    return tuple(out)


def num_patches(h: int, w: int, p: int = 64) -> int:
    """Grid patches per image."""
    _check_divisible(h, w, p)
    return (h // p) * (w // p)
