"""Grid patches (order of the PyTorch reference, exact inverse), overlapping windows and their
blend (against brute-force numpy), and aligned random crops."""

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


def _coverage_by_enumeration(side, p, placement):
    """P(pixel in crop) per position along one axis, over every equally likely draw."""
    top, cover = side - p, np.zeros(side)
    if placement == "uniform":
        corners = list(range(top + 1))
    else:  # a pixel u of the side at offset o in the crop, moved inward
        corners = [min(max(u - o, 0), top) for u in range(side) for o in range(p)]
    for c in corners:
        cover[c : c + p] += 1
    return cover / len(corners)


@pytest.mark.parametrize("placement", patches.CROP_PLACEMENTS)
def test_crop_placement_covers_each_pixel_as_enumerated(placement):
    # Canvas 20 x 96 whose valid region is 20 x 80 (a keep_aspect image); 16 x 16 crops.
    # Pixel values encode their column, so each crop's first column gives its corner.
    p, valid_w, n_crops = 16, 80, 6000
    img = np.tile(np.arange(96, dtype=np.float32), (1, 20, 1))[..., None]
    (crops,) = patches.random_crops(
        jax.random.key(7),
        img,
        n_crops,
        p,
        limits_Nx2=jnp.array([[20, valid_w]]),
        placement=placement,
    )
    xs = np.asarray(crops)[:, 0, 0, 0].astype(int)
    assert xs.min() >= 0 and xs.max() <= valid_w - p  # never beyond the valid region
    seen = np.zeros(valid_w)
    for x in xs:
        seen[x : x + p] += 1
    expected = _coverage_by_enumeration(valid_w, p, placement)
    np.testing.assert_allclose(seen / n_crops, expected, atol=0.03)
    edge_share = expected[0] / expected[valid_w // 2]
    if placement == "uniform":
        assert edge_share == pytest.approx(1 / p)  # 1 corner holds the first column, p the middle
    else:
        assert 0.45 < edge_share < 0.6  # about half as often, by the enumeration


def test_unknown_crop_placement_is_rejected():
    with pytest.raises(ValueError, match="crop placement"):
        patches.random_crops(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), 1, 16, placement="x")


def test_random_crops_reject_misaligned_or_too_small_inputs():
    x = jnp.zeros((2, 32, 32, 3))
    with pytest.raises(ValueError, match="does not match"):
        patches.random_crops(jax.random.key(0), x, 1, 16, jnp.zeros((2, 32, 31)))
    with pytest.raises(ValueError, match="larger than the images"):
        patches.random_crops(jax.random.key(0), x, 1, 64)


# Jitted entry points: eager dispatch of the (p/stride)^2 phases compiles op by op (slow on CPU).
_to_windows = jax.jit(patches.to_windows, static_argnums=(1, 2))
_from_windows = jax.jit(patches.from_windows, static_argnums=(1, 2, 3, 4))


def _hann(p):
    """The documented window weight, by hand: sin^2(pi (t + 1/2) / p)."""
    return np.array([np.sin(np.pi * (t + 0.5) / p) ** 2 for t in range(p)])


def _brute_windows(x_BxHxWxC, p, s):
    """Row-major windows of every image by explicit slicing."""
    _, h, w, _ = x_BxHxWxC.shape
    return np.stack(
        [
            img[y : y + p, xx : xx + p]
            for img in x_BxHxWxC
            for y in range(0, h - p + 1, s)
            for xx in range(0, w - p + 1, s)
        ]
    )


def _brute_blend(windows_NxPxPxC, b, h, w, s):
    """Weighted average of windows, window by window into numpy accumulators."""
    p = windows_NxPxPxC.shape[1]
    weight = np.outer(_hann(p), _hann(p))[:, :, None]
    acc = np.zeros((b, h, w, windows_NxPxPxC.shape[-1]))
    norm = np.zeros((b, h, w, 1))
    k = 0
    for i in range(b):
        for y in range(0, h - p + 1, s):
            for x in range(0, w - p + 1, s):
                acc[i, y : y + p, x : x + p] += weight * windows_NxPxPxC[k]
                norm[i, y : y + p, x : x + p] += weight
                k += 1
    assert k == len(windows_NxPxPxC) and norm.min() > 0
    return acc / norm


@pytest.mark.parametrize("stride", [8, 16, 32, 64])
def test_windows_are_the_slices_at_every_stride(stride):
    x = np.random.default_rng(2).normal(size=(2, 128, 192, 3)).astype(np.float32)
    got = _to_windows(jnp.asarray(x), 64, stride)
    np.testing.assert_array_equal(got, _brute_windows(x, 64, stride))
    ny, nx = (128 - 64) // stride + 1, (192 - 64) // stride + 1
    assert patches.num_windows(128, 192, 64, stride) == (ny, nx)
    assert got.shape == (2 * ny * nx, 64, 64, 3)


def test_stride_64_is_the_grid_path_exactly():
    x = np.random.default_rng(3).normal(size=(2, 128, 192, 3)).astype(np.float32)
    windows = _to_windows(jnp.asarray(x), 64, 64)
    np.testing.assert_array_equal(windows, patches.to_grid(jnp.asarray(x), 64))
    # A per-patch function that changes every value: the blend must not touch them.
    rec = jnp.tanh(windows * 1.37 + jnp.arange(len(windows))[:, None, None, None] * 0.01)
    np.testing.assert_array_equal(
        _from_windows(rec, 2, 128, 192, 64), patches.from_grid(rec, 2, 128, 192)
    )


@pytest.mark.parametrize("stride", [16, 32])
def test_blend_matches_a_brute_force_weighted_average(stride):
    b, h, w = 2, 128, 192
    x = np.random.default_rng(4).normal(size=(b, h, w, 3)).astype(np.float32)
    windows = _brute_windows(x, 64, stride)
    # Each window different from its neighbours' view of the same pixels.
    windows = windows * 0.5 + np.arange(len(windows), dtype=np.float32)[:, None, None, None]
    got = _from_windows(jnp.asarray(windows), b, h, w, stride)
    want = _brute_blend(windows.astype(np.float64), b, h, w, stride)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_identity_windows_give_the_image_back(stride):
    const = np.full((1, 128, 128, 3), 0.3, np.float32)
    back = _from_windows(_to_windows(jnp.asarray(const), 64, stride), 1, 128, 128, stride)
    np.testing.assert_allclose(back, const, atol=1e-6)
    x = np.random.default_rng(5).uniform(-1, 1, size=(2, 128, 192, 3)).astype(np.float32)
    back = _from_windows(_to_windows(jnp.asarray(x), 64, stride), 2, 128, 192, stride)
    np.testing.assert_allclose(back, x, atol=2e-6)


def _grid_line_jump(img_HxWxC, p=64):
    """Largest absolute step between the two pixels on either side of a p-pixel grid line."""
    h, w = img_HxWxC.shape[:2]
    ys = [np.abs(img_HxWxC[k * p] - img_HxWxC[k * p - 1]).max() for k in range(1, h // p)]
    xs = [np.abs(img_HxWxC[:, k * p] - img_HxWxC[:, k * p - 1]).max() for k in range(1, w // p)]
    return max(ys + xs)


def test_overlapping_windows_reduce_the_grid_seams():
    h = w = 256
    yy, xx = np.mgrid[:h, :w] / h
    smooth = np.stack([np.sin(3 * yy + 2 * xx)] * 3, axis=-1)[None].astype(np.float32)
    jumps = {}
    for stride in (64, 16):
        ny, nx = (h - 64) // stride + 1, (w - 64) // stride + 1
        windows = _brute_windows(smooth, 64, stride)
        # A per-window gain depending on the window's position: seams wherever windows meet.
        iy, ix = np.divmod(np.arange(ny * nx), nx)
        gain = 1.0 + 0.2 * np.sin(1.7 * iy * stride / 64 + 2.3 * ix * stride / 64)
        rec = windows * gain[:, None, None, None].astype(np.float32)
        out = np.asarray(_from_windows(jnp.asarray(rec), 1, h, w, stride))
        np.testing.assert_allclose(out, _brute_blend(rec, 1, h, w, stride), atol=1e-5)
        jumps[stride] = _grid_line_jump(out[0])
    # The grid's seams are the gain steps (up to ~0.2 x |image|); blending spreads them out.
    assert jumps[64] > 0.05
    assert jumps[16] < jumps[64] / 4, jumps


def test_bad_window_strides_are_an_error():
    x = jnp.zeros((1, 128, 128, 3))
    for stride in (0, 24, 128, 16.0):
        with pytest.raises(ValueError, match="stride"):
            patches.to_windows(x, 64, stride)
        with pytest.raises(ValueError, match="stride"):
            patches.from_windows(jnp.zeros((9, 64, 64, 3)), 1, 128, 128, stride)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patches.to_windows(jnp.zeros((1, 100, 128, 3)), 64, 32)


def _old_random_crops(key, images, k, p):
    """The draws of random_crops before crop limits existed (the square-mode training crops)."""
    n, h, w = images.shape[:3]
    key_y, key_x = jax.random.split(key)
    ys = np.asarray(jax.random.randint(key_y, (n, k), 0, h - p + 1))
    xs = np.asarray(jax.random.randint(key_x, (n, k), 0, w - p + 1))
    crops = [
        images[i, y : y + p, x : x + p] for i in range(n) for y, x in zip(ys[i], xs[i], strict=True)
    ]
    return np.stack(crops)


def test_random_crops_without_limits_draw_what_they_drew_before():
    images = np.random.default_rng(2).normal(size=(3, 40, 48, 2)).astype(np.float32)
    for seed in range(3):
        (got,) = patches.random_crops(jax.random.key(seed), images, 5, 16)
        np.testing.assert_array_equal(got, _old_random_crops(jax.random.key(seed), images, 5, 16))


def test_random_crops_with_limits_stay_inside_each_valid_region():
    # Pixel values encode their position, so a crop's first pixel gives its corner.
    n, h, w, p, k = 4, 40, 48, 16, 8
    coords = (np.arange(h)[:, None] * 1000 + np.arange(w)[None, :]).astype(np.float32)
    images = np.broadcast_to(coords[None, :, :, None], (n, h, w, 1))
    limits = np.array([[40, 48], [20, 30], [16, 16], [10, 47]], np.int32)  # last: h < p
    crop_fn = jax.jit(
        lambda key: patches.random_crops(key, images, k, p, limits_Nx2=jnp.asarray(limits))
    )
    seen = [set() for _ in range(n)]
    for seed in range(60):
        (crops,) = crop_fn(jax.random.key(seed))
        corners = np.asarray(crops)[:, 0, 0, 0].reshape(n, k)
        for i in range(n):
            for c in corners[i]:
                y, x = divmod(int(c), 1000)
                seen[i].add((y, x))
    for i, (vh, vw) in enumerate(limits):
        top_y, top_x = max(vh - p, 0), max(vw - p, 0)
        ys, xs = {y for y, _ in seen[i]}, {x for _, x in seen[i]}
        assert ys <= set(range(top_y + 1)) and xs <= set(range(top_x + 1)), i
        # every allowed row and column is drawn (uniform over the valid corners)
        assert ys == set(range(top_y + 1)) and xs == set(range(top_x + 1)), i
    assert seen[2] == {(0, 0)} and {y for y, _ in seen[3]} == {0}


def test_focused_crops_contain_a_mask_pixel_drawn_uniformly():
    n, s, p, k = 3, 40, 16, 4
    mask = np.zeros((n, s, s), bool)
    mask[0, 5, 30] = mask[0, 35, 2] = True  # two pixels, the second near a corner
    mask[1, 20:22, 10:13] = True
    # image 2: no mask pixel inside its valid region (only in the padding below row 25)
    mask[2, 30, 5] = True
    limits = jnp.array([[s, s], [s, s], [25, s]], jnp.int32)
    images = jnp.arange(n * s * s, dtype=jnp.float32).reshape(n, s, s, 1)
    hits = {(5, 30): 0, (35, 2): 0}
    fn = jax.jit(
        lambda key: patches.random_crops(
            key, images, k, p, jnp.asarray(mask), limits_Nx2=limits, focus=(jnp.asarray(mask), 2)
        )
    )
    plain_fn = jax.jit(lambda key: patches.random_crops(key, images, k, p, limits_Nx2=limits))
    for seed in range(60):
        crops, mcrops = map(np.asarray, fn(jax.random.key(seed)))
        (plain,) = map(np.asarray, plain_fn(jax.random.key(seed)))
        crops, mcrops, plain = (a.reshape(n, k, p, p, -1) for a in (crops, mcrops, plain))
        assert mcrops[:2, :2].any(axis=(2, 3, 4)).all()  # focused crops hold a mask pixel
        np.testing.assert_array_equal(crops[:, 2:], plain[:, 2:])  # the others are unchanged
        np.testing.assert_array_equal(crops[2], plain[2])  # no pixel: uniform corners kept
        for c in crops[0, :2]:
            y0, x0 = divmod(int(c[0, 0, 0]) % (s * s), s)
            for y, x in hits:
                hits[(y, x)] += y0 <= y < y0 + p and x0 <= x < x0 + p
    # each of image 0's two pixels is drawn about half of the 120 times
    assert 35 <= hits[(5, 30)] <= 85 and 35 <= hits[(35, 2)] <= 85


def test_corners_on_mask_move_inward_at_the_valid_border():
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 19, 0] = True  # last valid row, first column; the valid region is 20 x 32
    ys, xs = patches.corners_on_mask(
        jax.random.key(0), jnp.asarray(mask), 50, 8, jnp.array([[20, 32]], jnp.int32)
    )
    ys, xs = np.asarray(ys), np.asarray(xs)
    assert (ys == 12).all()  # the crop's last row is row 19 (top 20 - 8)
    assert (xs == 0).all()
