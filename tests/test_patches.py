"""Grid patches (order of the PyTorch reference, exact inverse) and aligned random crops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import patches


def _torch_split_patches_nhwc(images_BxHxWxC, p):
    """The reference's `split_patches` (NCHW, one image) in numpy, batched, back to NHWC."""
    out = []
    for img in np.asarray(images_BxHxWxC):
        chw = img.transpose(2, 0, 1)
        c, h, w = chw.shape
        grid = chw.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4).reshape(-1, c, p, p)
        out.append(grid.transpose(0, 2, 3, 1))
    return np.concatenate(out, axis=0)


def test_grid_order_matches_torch_reference_and_is_inverted_exactly():
    x = np.random.default_rng(0).normal(size=(2, 128, 192, 3)).astype(np.float32)
    grid = patches.to_grid(jnp.asarray(x), 64)
    assert grid.shape == (2 * 2 * 3, 64, 64, 3)
    np.testing.assert_array_equal(grid, _torch_split_patches_nhwc(x, 64))
    # Row-major: patch 1 of image 0 is the top row, second column; patch 6 starts image 1.
    np.testing.assert_array_equal(grid[1], x[0, :64, 64:128])
    np.testing.assert_array_equal(grid[6], x[1, :64, :64])
    np.testing.assert_array_equal(patches.from_grid(grid, 2, 128, 192), x)
    assert patches.num_patches(128, 192) == 6


@pytest.mark.parametrize("shape", [(1, 100, 128, 3), (1, 128, 96, 3)])
def test_sizes_not_multiple_of_patch_are_an_error(shape):
    with pytest.raises(ValueError, match="multiple of the patch size 64"):
        patches.to_grid(jnp.zeros(shape))
    with pytest.raises(ValueError, match="multiple"):
        patches.from_grid(jnp.zeros((2, 64, 64, 3)), 1, shape[1], shape[2])


def _find(source_HxWx___, crop_PxPx___):
    """All top-left positions where `crop` occurs in `source`, by brute force."""
    p = crop_PxPx___.shape[0]
    h, w = source_HxWx___.shape[:2]
    return [
        (y, x)
        for y in range(h - p + 1)
        for x in range(w - p + 1)
        if np.array_equal(source_HxWx___[y : y + p, x : x + p], crop_PxPx___)
    ]


def test_random_crops_are_slices_aligned_across_arrays():
    rng = np.random.default_rng(1)
    n, h, w, k, p = 2, 40, 48, 3, 16
    images = rng.normal(size=(n, h, w, 3)).astype(np.float32)
    targets = images * 2.0 + 1.0
    masks = rng.integers(0, 2, size=(n, h, w)).astype(np.uint8)
    crop_fn = jax.jit(patches.random_crops, static_argnums=(2, 3))
    out = crop_fn(jax.random.key(0), images, k, p, targets, masks)
    assert isinstance(out, tuple) and len(out) == 3
    crops, target_crops, mask_crops = (np.asarray(a) for a in out)
    assert crops.shape == (n * k, p, p, 3)
    assert target_crops.shape == (n * k, p, p, 3)
    assert mask_crops.shape == (n * k, p, p) and mask_crops.dtype == np.uint8
    positions = set()
    for i in range(n * k):
        src = i // k  # crops of image n are consecutive
        found = _find(images[src], crops[i])
        assert len(found) == 1, found  # random normal images: the position is unique
        y, x = found[0]
        positions.add((src, y, x))
        np.testing.assert_array_equal(target_crops[i], targets[src, y : y + p, x : x + p])
        np.testing.assert_array_equal(mask_crops[i], masks[src, y : y + p, x : x + p])
    assert len(positions) > 1  # not all at the same place

    again = crop_fn(jax.random.key(0), images, k, p, targets, masks)
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = crop_fn(jax.random.key(1), images, k, p)
    assert len(other) == 1
    assert not np.array_equal(other[0], crops)


def test_random_crops_cover_every_valid_position_including_the_last():
    # 5x5 image, 4x4 crops: 4 valid top-left corners, all must be drawn eventually.
    img = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    (crops,) = patches.random_crops(jax.random.key(3), img, 200, 4)
    corners = {(int(c[0, 0, 0]) // 5, int(c[0, 0, 0]) % 5) for c in np.asarray(crops)}
    assert corners == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_random_crops_reject_misaligned_or_too_small_inputs():
    x = jnp.zeros((2, 32, 32, 3))
    with pytest.raises(ValueError, match="does not match"):
        patches.random_crops(jax.random.key(0), x, 1, 16, jnp.zeros((2, 32, 31)))
    with pytest.raises(ValueError, match="larger than the images"):
        patches.random_crops(jax.random.key(0), x, 1, 64)
