"""Patches: test-time grids and overlapping windows, their blends, and aligned training crops.

The model sees 64x64 patches (SPEC section 1). At test time an image is cut into the
non-overlapping grid, row-major per image (the order of `split_patches` in the PyTorch
reference), the patches are reconstructed in one batch and stitched back with `from_grid`.
With a stride below the patch size, `to_windows` cuts overlapping windows and `from_windows`
blends their reconstructions with a smooth (Hann) window weight, removing the grid seams.
For training, `random_crops` takes randomly placed crops and applies the same positions to
any aligned arrays (clean target, mask), so input and target never drift apart.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# train.crop_placement: how a training crop's corner is drawn. `uniform` (the paper): uniform
# over all corners, so a pixel d < p from a side lies in (d + 1)/p as many crops as one
# further in. `cover`: a uniform pixel of the valid region at a uniform place in the crop,
# moved inward where the crop would leave it, so a pixel on a side lies in about half as
# many crops as one further in, and every pixel >= p/2 from the sides in as many.
CROP_PLACEMENTS = ("uniform", "cover")


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
    key: Array,
    images_NxHxWxC: Array,
    crops_per_image: int,
    p: int = 64,
    *others: Array,
    limits_Nx2: Array | None = None,
    focus: tuple[Array, int] | None = None,
    placement: str = "uniform",
) -> tuple[Array, ...]:
    """`crops_per_image` randomly placed p x p crops of every image, the same ones of `others`.

    Top-left corners are drawn independently for each crop: with `placement="uniform"` (the
    paper) uniformly over all valid positions (0..H-p, 0..W-p); with `"cover"` as
    `CROP_PLACEMENTS` says, within the same positions. jit-able with `crops_per_image`, `p`
    and `placement` static. With `limits_Nx2` (int [N, 2], the valid (h, w) of each image,
    e.g. a keep_aspect image padded into an H x W canvas) the corners of image n lie in
    0..h_n-p, 0..w_n-p (0 on a side shorter than p), so a crop never leaves the valid region
    where it fits in it; without them the uniform draws are exactly those of the unlimited
    crops.

    Args:
      key: PRNG key.
      images_NxHxWxC: source images.
      crops_per_image: crops taken from each image.
      p: crop side.
      *others: arrays aligned with the images, [N, H, W, ...] (e.g. the clean target
        [N,H,W,C] or a mask [N,H,W]); cropped at the same positions.
      focus: optional (mask [N, H, W] bool, count static): the first `count` crops of each
        image are instead placed by `corners_on_mask`, each containing a random True pixel of
        the mask (an image without one keeps its uniform corners); the others are unchanged.
      placement: one of `CROP_PLACEMENTS` (static).

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
    if placement not in CROP_PLACEMENTS:
        raise ValueError(f"crop placement {placement!r} is not one of {CROP_PLACEMENTS}")
    key_y, key_x = jax.random.split(key)
    top_Nx2 = _top_limits(n, h, w, p, limits_Nx2)
    if placement == "cover":
        sides_Nx2 = top_Nx2 + p if limits_Nx2 is None else jnp.asarray(limits_Nx2, jnp.int32)
        ys = _covering_corners(key_y, n, crops_per_image, p, sides_Nx2[:, :1], top_Nx2[:, :1])
        xs = _covering_corners(key_x, n, crops_per_image, p, sides_Nx2[:, 1:], top_Nx2[:, 1:])
    elif limits_Nx2 is None:
        ys = jax.random.randint(key_y, (n, crops_per_image), 0, h - p + 1)
        xs = jax.random.randint(key_x, (n, crops_per_image), 0, w - p + 1)
    else:
        ys = jax.random.randint(key_y, (n, crops_per_image), 0, top_Nx2[:, :1] + 1)
        xs = jax.random.randint(key_x, (n, crops_per_image), 0, top_Nx2[:, 1:] + 1)
    if focus is not None and focus[1] > 0:
        mask_NxHxW, count = focus
        fy, fx = corners_on_mask(jax.random.fold_in(key, 1), mask_NxHxW, count, p, limits_Nx2)
        ys = ys.at[:, :count].set(jnp.where(fy < 0, ys[:, :count], fy))
        xs = xs.at[:, :count].set(jnp.where(fx < 0, xs[:, :count], fx))
    # Outer vmap over images, inner over the crops of one image.
    crop_all = jax.vmap(jax.vmap(_crop, in_axes=(None, 0, 0, None)), in_axes=(0, 0, 0, None))
    out = []
    for arr in (images_NxHxWxC, *others):
        crops = crop_all(arr, ys, xs, p)
        out.append(crops.reshape((n * crops_per_image, p, p) + arr.shape[3:]))
    return tuple(out)


def _covering_corners(key, n: int, count: int, p: int, side_Nx1: Array, top_Nx1: Array):
    """Corners along one axis, int [n, count], for `placement="cover"`: a uniform pixel of
    the valid side (0..side-1) at a uniform offset in the crop (0..p-1), clipped to 0..top."""
    key_pixel, key_offset = jax.random.split(key)
    pixel = jax.random.randint(key_pixel, (n, count), 0, jnp.maximum(side_Nx1, 1))
    offset = jax.random.randint(key_offset, (n, count), 0, p)
    return jnp.clip(pixel - offset, 0, top_Nx1)


def _top_limits(n: int, h: int, w: int, p: int, limits_Nx2: Array | None) -> Array:
    """The largest top-left corner (y, x) of a p x p crop of each image, int [n, 2]."""
    if limits_Nx2 is None:
        return jnp.tile(jnp.array([[h - p, w - p]], jnp.int32), (n, 1))
    chex.assert_shape(limits_Nx2, (n, 2))
    return jnp.clip(jnp.asarray(limits_Nx2, jnp.int32) - p, 0, jnp.array([h - p, w - p]))


def corners_on_mask(key, mask_NxHxW, count: int, p: int, limits_Nx2=None):
    """Top-left corners (ys, xs), int [N, count], of p x p crops that each contain a pixel
    drawn uniformly from the True pixels of its image's mask inside the valid region
    (`limits_Nx2`, as in `random_crops`), at a uniform place in the crop (moved inward where
    the crop would leave the valid region; the pixel stays inside it). -1 for an image whose
    mask has no True pixel there."""
    n, h, w = mask_NxHxW.shape
    valid = jnp.ones((n, h, w), bool)
    if limits_Nx2 is not None:
        lim = jnp.asarray(limits_Nx2, jnp.int32)
        rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
        valid = (rows < lim[:, 0, None, None]) & (cols < lim[:, 1, None, None])
    cum_NxHW = jnp.cumsum((mask_NxHxW & valid).reshape(n, -1), axis=1, dtype=jnp.int32)
    total_N = cum_NxHW[:, -1]
    k_pick, k_y, k_x = jax.random.split(key, 3)
    rank = jnp.floor(jax.random.uniform(k_pick, (n, count)) * total_N[:, None]).astype(jnp.int32)
    pixel = jax.vmap(lambda c, r: jnp.searchsorted(c, r + 1, side="left"))(cum_NxHW, rank)
    top_Nx2 = _top_limits(n, h, w, p, limits_Nx2)
    ys = jnp.clip(pixel // w - jax.random.randint(k_y, (n, count), 0, p), 0, top_Nx2[:, :1])
    xs = jnp.clip(pixel % w - jax.random.randint(k_x, (n, count), 0, p), 0, top_Nx2[:, 1:])
    none = (total_N == 0)[:, None]
    return jnp.where(none, -1, ys), jnp.where(none, -1, xs)


def num_patches(h: int, w: int, p: int = 64) -> int:
    """Grid patches per image."""
    _check_divisible(h, w, p)
    return (h // p) * (w // p)


def _check_stride(p: int, stride: int):
    if not (isinstance(stride, int) and 0 < stride <= p and p % stride == 0):
        raise ValueError(f"window stride {stride!r} must be a positive divisor of {p}")


def num_windows(h: int, w: int, p: int = 64, stride: int = 64) -> tuple[int, int]:
    """Windows per image along y and x: top-left corners 0, stride, ..., H-p (and W-p)."""
    _check_divisible(h, w, p)
    _check_stride(p, stride)
    return (h - p) // stride + 1, (w - p) // stride + 1


def _slide(x: Array, axis: int, p: int, stride: int, n: int) -> Array:
    """Windows of length p every `stride` along `axis` -> that axis becomes [n, p].

    The axis is cut into blocks of `stride`; window k is blocks k .. k + p/stride - 1, so the
    windows are p/stride strided slices of the block axis, stacked (no per-window loop).
    """
    r = p // stride
    shape = x.shape
    blocks = x.reshape(shape[:axis] + (shape[axis] // stride, stride) + shape[axis + 1 :])
    parts = [jax.lax.slice_in_dim(blocks, a, a + n, axis=axis) for a in range(r)]
    stacked = jnp.stack(parts, axis=axis + 1)  # [..., n, r, stride, ...]
    return stacked.reshape(shape[:axis] + (n, p) + shape[axis + 1 :])


def to_windows(images_BxHxWxC: Array, p: int = 64, stride: int = 64) -> Array:
    """Cuts each image into p x p windows with top-left corners every `stride` pixels.

    Corners are 0, stride, ..., H-p in y (and likewise in x); H and W are multiples of p and
    `stride` divides p, so the last windows touch the border. `stride == p` is `to_grid`.

    Returns:
      [B*ny*nx, p, p, C] with (ny, nx) = `num_windows`: image 0 first, each image's windows
      row-major (window (i, j) has its corner at (i*stride, j*stride)).
    """
    b, h, w, c = images_BxHxWxC.shape
    ny, nx = num_windows(h, w, p, stride)
    if stride == p:
        return to_grid(images_BxHxWxC, p)
    x = _slide(images_BxHxWxC, 1, p, stride, ny)  # [B, ny, p, W, C]
    x = _slide(x, 3, p, stride, nx)  # [B, ny, p, nx, p, C]
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, p, p, c)


def window_weight(p: int = 64) -> np.ndarray:
    """The 1-D blending weight w(t) = sin^2(pi (t + 1/2) / p), t = 0..p-1 (float64).

    A Hann window sampled at pixel centres: 1 - sin^2(pi/(2p)) at the centre, sin^2(pi/(2p))
    (6.0e-4 for p=64) at either end, never zero. Shifted copies p/2 apart sum to exactly 1
    (sin^2 + cos^2), so in the interior at any stride dividing p/2 the weights add up to a
    constant. A window's 2-D weight is the outer product w(y) w(x).
    """
    t = np.arange(p, dtype=np.float64)
    return np.sin(np.pi * (t + 0.5) / p) ** 2


def _coverage(size: int, p: int, stride: int) -> np.ndarray:
    """Total 1-D weight at each of `size` pixels: sum over windows covering it (> 0)."""
    total = np.zeros(size)
    for k in range((size - p) // stride + 1):
        total[k * stride : k * stride + p] += window_weight(p)
    return total


def from_windows(patches_NxPxPxC: Array, b: int, h: int, w: int, stride: int = 64) -> Array:
    """Blends windows (the layout of `to_windows`) into [b, h, w, C] by a weighted average.

    out(y, x) = sum_k W_k(y, x) P_k(y - y_k, x - x_k) / sum_k W_k(y, x) over the windows k
    covering (y, x), with W_k(y, x) = w(y - y_k) w(x - x_k) and w from `window_weight`; every
    pixel is covered with positive weight. `stride == p` is `from_grid`, bit for bit (each pixel
    lies in exactly one window). The windows are summed in (p/stride)^2 phases, each phase a
    non-overlapping grid stitched with `from_grid` and zero-padded into place, in fixed order
    (deterministic, no scatter), in at least float32.
    """
    _, p, _, c = patches_NxPxPxC.shape
    ny, nx = num_windows(h, w, p, stride)
    chex.assert_shape(patches_NxPxPxC, (b * ny * nx, p, p, c))
    if stride == p:
        return from_grid(patches_NxPxPxC, b, h, w)
    dtype = jnp.promote_types(patches_NxPxPxC.dtype, jnp.float32)  # no bfloat16 sums
    weight = window_weight(p)
    weight_PxP = jnp.asarray(np.outer(weight, weight), dtype)
    x = (patches_NxPxPxC.astype(dtype) * weight_PxP[:, :, None]).reshape(b, ny, nx, p, p, c)
    r = p // stride
    acc = jnp.zeros((b, h, w, c), x.dtype)
    for a in range(r):
        for e in range(r):
            phase = x[:, a::r, e::r]  # windows at a*stride + k*p: a non-overlapping grid
            my, mx = phase.shape[1:3]
            stitched = from_grid(phase.reshape(-1, p, p, c), b, my * p, mx * p)
            pad = ((0, 0), (a * stride, h - a * stride - my * p))
            pad += ((e * stride, w - e * stride - mx * p), (0, 0))
            acc = acc + jnp.pad(stitched, pad)
    norm_HxW = np.outer(_coverage(h, p, stride), _coverage(w, p, stride))
    return acc / jnp.asarray(norm_HxW, x.dtype)[None, :, :, None]
