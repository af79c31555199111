"""GAAGA, the general artificial anomaly generation algorithm (paper eq. 1), on device.

    I_an = paste(I_p, crop(I_nt), blur(resize(crop(I_p))))

`synthesize` is pure JAX with static shapes, to run inside the jitted / pmapped training step.
For every image of the batch, with its own random numbers, it
  (a) crops a `patch_size` square from a random natural image of the bank,
  (b) crops a random region (each side between patch_size / 4 and patch_size) of the same normal
      image, resizes it to `patch_size` (bilinear) and Gaussian-blurs it,
  (c) pastes both at random places of the image, in random order (the second may cover part of
      the first), each as config `anomaly.paste_shape` (`PASTE_SHAPES`) says:
      `rect`: the whole `patch_size` square, an axis-aligned rectangle (the paper's eq. 1 and
      Fig. 3 paste the patch as it is);
      `blob`: through a random blob-shaped mask inside that square (`shape_mask`: ellipse to
      rounded rectangle, rotated, wobbly edge);
      `varied`: the same shapes with each half-axis drawn log-uniformly from 1/32 to 1 of half
      the side, so that small spots and thin strokes (cracks, scratches) occur as well as blobs.
The random numbers are laid out the same way for every shape, so one key puts the patches at the
same places (a blob lies inside the square `rect` pastes). The returned mask is exactly the set of
pixels whose value changed. This module owns only the synthesis (on device; `paste_on_host`
runs it on host images for the `pastes` threshold rule), its `benchmark` and the
`anomaly.paste_shape` option; the natural-image bank is loaded once, on the host, by
`cmaae_jax.natural_images`.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from cmaae_jax import images as images_lib

_HIGHEST = jax.lax.Precision.HIGHEST
# config anomaly.paste_shape: rect (paper, eq. 1) | blob | varied (blobs, spots and strokes)
PASTE_SHAPES = ("rect", "blob", "varied")
# `varied`: each half-axis log-uniform in [VARIED_MIN_AXIS, 1] of half the side, drawn apart,
# so a paste is a large blob, a small spot or a thin stroke (at patch 128: 2 px half-width).
VARIED_MIN_AXIS = 1 / 32


def _gaussian_matrix(size, sigma):
    """[size, size] row-normalised truncated Gaussian blur (static, numpy)."""
    if sigma <= 0:
        return np.eye(size, dtype=np.float32)
    i = np.arange(size)
    d = i[:, None] - i[None, :]
    g = np.exp(-0.5 * (d / sigma) ** 2) * (np.abs(d) <= math.ceil(3 * sigma))
    return (g / g.sum(1, keepdims=True)).astype(np.float32)


def _interp_matrix(size, start, length):
    """[size, size] bilinear weights that stretch input rows [start, start + length) to `size`."""
    u = start + (jnp.arange(size) + 0.5) * length / size - 0.5
    u = jnp.clip(u, 0.0, size - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(u[:, None] - jnp.arange(size)[None, :]))


# Each helper takes its random numbers as a vector `u` of uniforms in [0, 1): `synthesize` draws
# them for the whole batch in one call, which keeps the compiled program small.
NATURAL_U, BLUR_U, SHAPE_U = 3, 4, 10


def _randint(u, high):
    """An integer in [0, high) from a uniform u in [0, 1)."""
    return jnp.minimum(jnp.floor(u * high), high - 1).astype(jnp.int32)


def natural_patch(u, bank, patch_size):
    """A `patch_size` square crop of a bank image, float32 in [-1, 1]; u: [NATURAL_U]."""
    count, height, width, channels = bank.shape
    y, x = _randint(u[1], height - patch_size + 1), _randint(u[2], width - patch_size + 1)
    start = (_randint(u[0], count), y, x, 0)
    patch = jax.lax.dynamic_slice(bank, start, (1, patch_size, patch_size, channels))[0]
    if bank.dtype == jnp.uint8:
        return patch.astype(jnp.float32) / 127.5 - 1.0
    return patch.astype(jnp.float32)


def blurred_patch(u, image, patch_size, blur_sigma):
    """Crops a region of `image` [S, S, C], resizes it to `patch_size`, blurs it; u: [BLUR_U].

    Each side of the region is uniform in [patch_size / 4, patch_size]. A static patch_size window
    that holds the region is sliced out, then one matrix per axis does both the bilinear stretch
    and the (static) Gaussian blur, so every shape is static.
    """
    size, p = image.shape[0], patch_size
    h, w = p / 4 + u[0] * 0.75 * p, p / 4 + u[1] * 0.75 * p
    ry, rx = u[2] * (size - h), u[3] * (size - w)
    wy = jnp.minimum(jnp.floor(ry), size - p).astype(jnp.int32)
    wx = jnp.minimum(jnp.floor(rx), size - p).astype(jnp.int32)
    window = jax.lax.dynamic_slice(image, (wy, wx, 0), (p, p, image.shape[-1]))
    blur = jnp.asarray(_gaussian_matrix(p, blur_sigma))
    my = jnp.matmul(blur, _interp_matrix(p, ry - wy, h), precision=_HIGHEST)
    mx = jnp.matmul(blur, _interp_matrix(p, rx - wx, w), precision=_HIGHEST)
    out = jnp.einsum("ij,jkc->ikc", my, window, precision=_HIGHEST)
    return jnp.einsum("lk,ikc->ilc", mx, out, precision=_HIGHEST)


def shape_mask(u, patch_size, varied: bool = False, centre_shift=(0.0, 0.0), thinnest_px=0.0):
    """A random blob in a `patch_size` square, u: [SHAPE_U]: a rotated super-ellipse (exponent
    1.5, pointed, to 8, a rounded rectangle; half-axes 0.4 to 1 of half the side, or with
    `varied` each log-uniform in [VARIED_MIN_AXIS, 1], or from `thinnest_px` pixels when it
    is > 0) with a wobbly edge. Its centre is the square's, moved by `centre_shift` (dy, dx)
    pixels (the square then cuts the shape)."""
    half = patch_size / 2
    if varied:
        low = thinnest_px / half if thinnest_px > 0 else VARIED_MIN_AXIS
        a, b = half * low ** (1.0 - u[0]), half * low ** (1.0 - u[1])
    else:
        a, b = (0.4 + 0.6 * u[0]) * half, (0.4 + 0.6 * u[1]) * half
    n, theta = 1.5 + 6.5 * u[2], u[3] * jnp.pi
    c = jnp.arange(patch_size) + 0.5 - half
    y, x = c[:, None] - centre_shift[0], c[None, :] - centre_shift[1]
    cu, su = jnp.cos(theta), jnp.sin(theta)
    u_, v_ = x * cu + y * su, -x * su + y * cu
    rho = (jnp.abs(u_ / a) ** n + jnp.abs(v_ / b) ** n) ** (1.0 / n)
    # Edge wobble sum_k amp_k cos(k phi + phase_k), k = 2..4, with cos/sin(k phi) built from
    # cos/sin(phi) by angle addition (cheaper than arctan2 and cos on CPU).
    r = jnp.sqrt(u_ * u_ + v_ * v_) + 1e-6
    c1, s1 = u_ / r, v_ / r
    c2, s2 = c1 * c1 - s1 * s1, 2.0 * s1 * c1
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    c4, s4 = c2 * c2 - s2 * s2, 2.0 * s2 * c2
    amp, phase = 0.08 * u[4:7], 2 * jnp.pi * u[7:10]
    ca, sa = amp * jnp.cos(phase), amp * jnp.sin(phase)
    wobble = ca[0] * c2 - sa[0] * s2 + ca[1] * c3 - sa[1] * s3 + ca[2] * c4 - sa[2] * s4
    return rho <= 1.0 + wobble


def paste_places(u, valid_hw, patch_size):
    """Top-left corners [2, (y, x)] of the two pasted squares and their shapes' shifts from the
    square's centre [2, 2], from u: [4] (per paste, row then column) and the image's valid
    size (h, w) in its canvas. On a side at least `patch_size` long the square lies inside
    the valid region, uniformly (a full canvas: the places of square images). On a shorter
    side the square starts at 0 and the shape's centre is uniform over the valid length, so
    that every paste lands on the image, not in the padding keep_aspect adds around it."""
    length = jnp.tile(jnp.asarray(valid_hw, jnp.float32), 2)  # (h, w, h, w)
    room = jnp.maximum(length - patch_size, 0.0)
    top = _randint(u, room + 1).reshape(2, 2)
    shift = jnp.where(length < patch_size, u * length - patch_size / 2, 0.0).reshape(2, 2)
    return top, shift


def _patches_one(u, image, valid_hw, bank, patch_size, blur_sigma, paste_shape, thinnest_px):
    """The natural and blurred patches of one image, their shape masks, places and order."""
    u = jnp.split(u, np.cumsum([NATURAL_U, BLUR_U, SHAPE_U, SHAPE_U, 4]))
    patches = (
        natural_patch(u[0], bank, patch_size).astype(image.dtype),
        blurred_patch(u[1], image, patch_size, blur_sigma).astype(image.dtype),
    )
    places, shifts = paste_places(u[4], valid_hw, patch_size)
    if paste_shape == "rect":
        masks = (jnp.ones((patch_size, patch_size), bool),) * 2
    else:
        varied = paste_shape == "varied"
        masks = tuple(
            shape_mask(u[2 + j], patch_size, varied, shifts[j], thinnest_px) for j in range(2)
        )
    return patches, masks, places, u[5][0] < 0.5


def _paste_all(normal, patches, masks, places, blur_first, opacity_Bx2=None):
    """Pastes the (natural, blurred) patches [B, P, P, C] through masks [B, P, P] at places
    [B, 2, (y, x)], in the order blur_first [B] sets (the second may cover part of the first).
    `opacity_Bx2` (natural, blurred; None: 1) blends each paste over what lies under it:
    region + opacity * (patch - region) inside the mask.

    A loop over the batch keeps every update an in-place slice update (under vmap they become
    scatters over whole images). The changed-pixel mask compares final and original images on
    the two windows only (overlapping windows agree)."""
    batch, size, _, channels = normal.shape
    p = patches[0].shape[1]

    def window(array, b, j):
        return (b, places[b, j, 0], places[b, j, 1], 0)[: array.ndim]

    def paste(b, out_and_mask):
        out, mask = out_and_mask
        for step in range(2):
            j = jnp.where(blur_first[b], 1 - step, step)  # 0: natural, 1: blurred
            patch = jnp.where(j == 0, patches[0][b], patches[1][b])
            shape = jnp.where(j == 0, masks[0][b], masks[1][b])
            region = jax.lax.dynamic_slice(out, window(out, b, j), (1, p, p, channels))
            if opacity_Bx2 is not None:
                patch = region[0] + opacity_Bx2[b, j] * (patch - region[0])
            region = jnp.where(shape[None, ..., None], patch[None], region)
            out = jax.lax.dynamic_update_slice(out, region, window(out, b, j))
        for j in range(2):  # image b is final now
            new = jax.lax.dynamic_slice(out, window(out, b, j), (1, p, p, channels))
            old = jax.lax.dynamic_slice(normal, window(normal, b, j), (1, p, p, channels))
            mask = jax.lax.dynamic_update_slice(mask, jnp.any(new != old, -1), window(mask, b, j))
        return out, mask

    mask = jnp.zeros((batch, size, size), bool)
    out, mask = jax.lax.fori_loop(0, batch, paste, (normal, mask))
    return out, mask


def synthesize(
    key,
    normal,
    bank,
    patch_size,
    blur_sigma,
    paste_shape="blob",
    limits_Bx2=None,
    thinnest_px=0.0,
    min_opacity=1.0,
):
    """GAAGA on a batch: returns (anomalous [B,S,S,C], clean [B,S,S,C], mask [B,S,S] bool).

    `normal`: float images in [-1, 1], [B, S, S, C]. `bank`: natural images [K, H, W, C], float
    in [-1, 1] or uint8 (converted per crop, which keeps the bank four times smaller on device).
    `patch_size`, `blur_sigma` and `paste_shape` (one of `PASTE_SHAPES`) are static. Each image
    draws its own random numbers. `clean` is `normal` itself; `mask` is exactly where
    `anomalous` differs from it. `limits_Bx2` (int, the valid (h, w) of each image in its
    canvas, as keep_aspect pads it) keeps the pastes on the image (`paste_places`); without
    it, or with full-canvas limits, the pastes are those of square images. `thinnest_px`
    (static, `varied` only): the smallest half-axis in pixels (0: VARIED_MIN_AXIS of half
    the side). `min_opacity` (static): below 1, each paste is blended over the image with its
    own opacity, uniform in [min_opacity, 1] (drawn from `fold_in(key, 1)`, so the shapes and
    places are those of the hard pastes); 1 is the paper's hard paste.
    """
    if paste_shape not in PASTE_SHAPES:
        raise ValueError(f"paste_shape must be one of {PASTE_SHAPES}, got {paste_shape!r}")
    _, size, width, channels = normal.shape
    if size != width or not 0 < patch_size <= min(size, bank.shape[1], bank.shape[2]):
        raise ValueError(
            f"GAAGA needs square images and patch_size <= image and bank sides; got images "
            f"{normal.shape}, bank {bank.shape}, patch_size {patch_size}"
        )
    if bank.shape[-1] != channels:
        raise ValueError(f"bank has {bank.shape[-1]} channels, images have {channels}")
    u = jax.random.uniform(key, (normal.shape[0], NATURAL_U + BLUR_U + 2 * SHAPE_U + 5))
    if limits_Bx2 is None:
        limits_Bx2 = jnp.full((normal.shape[0], 2), size, jnp.int32)

    def one(u, img, hw):
        return _patches_one(u, img, hw, bank, patch_size, blur_sigma, paste_shape, thinnest_px)

    opacity = None
    if min_opacity < 1.0:
        a = jax.random.uniform(jax.random.fold_in(key, 1), (normal.shape[0], 2))
        opacity = (min_opacity + (1.0 - min_opacity) * a).astype(normal.dtype)
    anomalous, mask = _paste_all(normal, *jax.vmap(one)(u, normal, limits_Bx2), opacity)
    return anomalous, normal, mask


def paste_on_host(images_u8, sizes_Nx2, bank, key, anomaly, canvas_size, chunk=8):
    """GAAGA pastes on host images, for the `pastes` threshold rule: (uint8 images, bool masks
    [h_i, w_i]) with each image's shape and the masks of its valid region.

    `images_u8`: an array [N, H, W, 3] or a list of [H_i, W_i, 3] (keep_aspect canvases) with
    valid sizes `sizes_Nx2`. Each valid region is reflect-padded to `canvas_size` squares,
    pasted as the training's stage 2 pastes (`anomaly`: config.anomaly; pastes on the valid
    region), then put back in its own canvas by the same reflection. Image i draws its random
    numbers from `fold_in(key, i)`, so a result does not depend on `chunk`.
    """
    shape = anomaly.get("paste_shape", "blob")
    thinnest = anomaly.get("thinnest_px", 0.0)

    def one_chunk(keys, normal_u8, limits):
        def one(k, x, hw):
            out, _, mask = synthesize(
                k, x[None], bank, anomaly.patch_size, anomaly.blur_sigma, shape, hw[None], thinnest
            )
            return out[0], mask[0]

        out, mask = jax.vmap(one)(keys, images_lib.to_float(normal_u8), limits)
        return images_lib.to_uint8(out), mask

    fn = jax.jit(one_chunk)
    sizes = np.asarray(sizes_Nx2, np.int32).reshape(-1, 2)
    pasted, masks = [], []
    for lo in range(0, len(sizes), chunk):
        idx = np.arange(lo, min(lo + chunk, len(sizes)))
        padded = np.resize(idx, chunk)  # fixed shapes: one compilation
        canvases = np.stack(
            [
                images_lib.pad_to(images_u8[i][:h, :w], (canvas_size,) * 2)
                for i, (h, w) in zip(padded, sizes[padded], strict=True)
            ]
        )
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(padded))
        out, mask = (np.asarray(a) for a in fn(keys, canvases, jnp.asarray(sizes[padded])))
        for j, i in enumerate(idx):
            h, w = sizes[i]
            pasted.append(images_lib.pad_to(out[j, :h, :w], images_u8[i].shape[:2]))
            masks.append(mask[j, :h, :w])
    return pasted, masks


def benchmark(
    image_size=512,
    batch=32,
    steps=5,
    patch_size=None,
    blur_sigma=3.0,
    bank_size=8,
    paste_shape="blob",
):
    """Images per second of jitted `synthesize` on random data (after a warm-up call)."""
    patch_size = patch_size or image_size // 2
    rng = np.random.default_rng(0)
    normal = jnp.asarray(rng.uniform(-1, 1, (batch, image_size, image_size, 3)), jnp.float32)
    bank = jnp.asarray(rng.integers(0, 256, (bank_size, image_size, image_size, 3), np.uint8))
    key = jax.random.PRNGKey(0)
    fn = jax.jit(lambda k: synthesize(k, normal, bank, patch_size, blur_sigma, paste_shape)[0])
    jax.block_until_ready(fn(key))
    start = time.perf_counter()
    for i in range(steps):
        jax.block_until_ready(fn(jax.random.fold_in(key, i)))
    return batch * steps / (time.perf_counter() - start)
