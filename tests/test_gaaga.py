"""Tests of GAAGA (anomaly synthesis on device)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import gaaga, synthetic

SIZE, PATCH, SIGMA, BATCH = 128, 64, 2.0, 4

synthesize = jax.jit(
    gaaga.synthesize, static_argnames=("patch_size", "blur_sigma", "paste_shape", "min_opacity")
)
run = functools.partial(synthesize, patch_size=PATCH, blur_sigma=SIGMA)


def _to_float(images):
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def normal():
    return _to_float(np.stack([synthetic.texture("wood", SIZE, s) for s in range(BATCH)]))


@pytest.fixture(scope="module")
def bank():
    return _to_float(synthetic.natural_images(3, SIZE, seed=0))


def _check_mask_contract(anomalous, clean, mask, normal):
    anomalous, clean, mask, normal = map(np.asarray, (anomalous, clean, mask, normal))
    assert anomalous.shape == normal.shape and anomalous.dtype == np.float32
    assert mask.shape == normal.shape[:3] and mask.dtype == bool
    np.testing.assert_array_equal(clean, normal)  # the target is the untouched input
    np.testing.assert_array_equal(np.any(anomalous != normal, axis=-1), mask)
    np.testing.assert_array_equal(anomalous[~mask], normal[~mask])
    assert mask.reshape(len(mask), -1).any(1).all()  # every image got an anomaly


@pytest.mark.parametrize("shape", ["blob", "rect", "varied"])
def test_mask_is_exactly_the_changed_pixels(normal, bank, shape):
    anomalous, clean, mask = run(jax.random.PRNGKey(0), normal, bank, paste_shape=shape)
    _check_mask_contract(anomalous, clean, mask, normal)
    cover = np.asarray(mask).mean((1, 2))
    # rect: one or two whole 64x64 squares of the 128x128 image, 1/4 to 1/2 of it (less the
    # rare pixels a patch happens to repeat exactly).
    # varied: as small as a few pixels (half-axes down to 1/32 of the 32-px half side).
    low, high = {"blob": (0.01, 0.5), "rect": (0.24, 0.5), "varied": (0.0, 0.5)}[shape]
    assert (cover > low).all() and (cover <= high).all()
    assert np.abs(np.asarray(anomalous)).max() <= 1.0 + 1e-6


def test_deterministic_per_key_and_different_across_keys(normal, bank):
    a = run(jax.random.PRNGKey(1), normal, bank)
    b = run(jax.random.PRNGKey(1), normal, bank)
    c = run(jax.random.PRNGKey(2), normal, bank)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])
    # Within a batch, images get independent anomalies: same input, different masks.
    same = jnp.broadcast_to(normal[:1], normal.shape)
    masks = np.asarray(run(jax.random.PRNGKey(3), same, bank)[2])
    assert not np.array_equal(masks[0], masks[1])


def test_uint8_bank(normal):
    bank_u8 = synthetic.natural_images(2, SIZE, seed=4)
    out = run(jax.random.PRNGKey(5), normal, jnp.asarray(bank_u8))
    _check_mask_contract(*out, normal)
    u = jax.random.uniform(jax.random.PRNGKey(6), (gaaga.NATURAL_U,))
    patch = gaaga.natural_patch(u, jnp.asarray(bank_u8), PATCH)
    assert patch.dtype == jnp.float32 and float(patch.min()) >= -1 and float(patch.max()) <= 1


def test_vmap_and_pmap_give_different_anomalies(normal, bank):
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    batched = jax.vmap(lambda k: run(k, normal, bank))(keys)
    for i in range(3):
        _check_mask_contract(batched[0][i], batched[1][i], batched[2][i], normal)
    assert not np.array_equal(batched[2][0], batched[2][1])

    n = 4
    if jax.local_device_count() < n:
        pytest.skip("needs 4 devices (tests/conftest.py sets 4 virtual CPU devices)")

    def per_device(key, images):
        key = jax.random.fold_in(key, jax.lax.axis_index("d"))
        return gaaga.synthesize(key, images, bank, PATCH, SIGMA)

    replicated = jnp.broadcast_to(normal, (n,) + normal.shape)
    out = jax.pmap(per_device, axis_name="d", in_axes=(None, 0))(jax.random.PRNGKey(8), replicated)
    masks = np.asarray(out[2])
    for d in range(n):
        _check_mask_contract(out[0][d], out[1][d], masks[d], normal)
        for e in range(d):
            assert not np.array_equal(masks[d], masks[e])


@pytest.mark.parametrize("shape", ["blob", "rect", "varied"])
def test_pasted_natural_patch_is_a_crop_of_a_bank_image(shape):
    # With a flat normal image the blurred patch changes nothing (where pasted last, it restores
    # the flat value), so every changed pixel comes from the natural patch; random bank values
    # make each pixel's location unique.
    flat = jnp.zeros((BATCH, SIZE, SIZE, 3))
    bank = np.asarray(jax.random.uniform(jax.random.PRNGKey(9), (3, SIZE, SIZE, 3), minval=-1))
    out = run(jax.random.PRNGKey(10), flat, jnp.asarray(bank), paste_shape=shape)
    anomalous, _, mask = map(np.asarray, out)
    for b in range(BATCH):
        ys, xs = np.nonzero(mask[b])
        assert len(ys) > 0
        assert ys.max() - ys.min() < PATCH and xs.max() - xs.min() < PATCH
        hits = np.argwhere(np.all(bank == anomalous[b, ys[0], xs[0]], axis=-1))
        assert len(hits) == 1
        k, dy, dx = hits[0][0], hits[0][1] - ys[0], hits[0][2] - xs[0]
        np.testing.assert_array_equal(anomalous[b, ys, xs], bank[k, ys + dy, xs + dx])
        # The crop lies inside the bank image at most PATCH away from where the mask starts.
        assert 0 <= ys.min() + dy and ys.max() + dy < SIZE
        assert 0 <= xs.min() + dx and xs.max() + dx < SIZE


def _square(y, x):
    out = np.zeros((SIZE, SIZE), bool)
    out[y : y + PATCH, x : x + PATCH] = True
    return out


def _squares_inside(mask):
    """Top-left corners of every PATCH x PATCH square lying wholly inside `mask` (brute force)."""
    n = SIZE - PATCH + 1
    return [(y, x) for y in range(n) for x in range(n) if mask[y : y + PATCH, x : x + PATCH].all()]


def test_rect_pastes_two_whole_squares_one_a_bank_crop():
    keys = jax.random.split(jax.random.PRNGKey(20), 3)
    normal = jax.random.uniform(keys[0], (BATCH, SIZE, SIZE, 3), minval=-1)
    bank = np.asarray(jax.random.uniform(keys[1], (3, SIZE, SIZE, 3), minval=-1))
    out = run(keys[2], normal, jnp.asarray(bank), paste_shape="rect")
    _check_mask_contract(*out, normal)
    anomalous, mask = np.asarray(out[0]), np.asarray(out[2])
    # Random values: a pixel triple identifies one place of the bank.
    where = {v.tobytes(): i for i, v in enumerate(bank.reshape(-1, 3))}
    for b in range(BATCH):
        squares = _squares_inside(mask[b])
        pairs = [
            (s, t)
            for s in squares
            for t in squares
            if np.array_equal(_square(*s) | _square(*t), mask[b])
        ]
        assert pairs, "the mask is not the union of at most two PATCH squares"
        ys, xs = np.nonzero(mask[b])
        index = np.array([where.get(v.tobytes(), -1) for v in anomalous[b, ys, xs]])
        natural = np.zeros_like(mask[b])
        natural[ys[index >= 0], xs[index >= 0]] = True
        k, by, bx = np.unravel_index(index[index >= 0], bank.shape[:3])
        dy, dx = by - ys[index >= 0], bx - xs[index >= 0]
        # One crop of one bank image (one shift), pasted pixel for pixel.
        assert natural.any() and len({*k}) == len({*dy}) == len({*dx}) == 1
        ny, nx = np.nonzero(natural)
        np.testing.assert_array_equal(anomalous[b, ny, nx], bank[k[0], ny + dy[0], nx + dx[0]])
        blurred = mask[b] & ~natural
        # The natural square is one of the two, its crop inside the bank image; the rest is the
        # other square; whichever was pasted last is whole.
        assert any(
            not (natural & ~_square(*s)).any()
            and not (blurred & ~_square(*t)).any()
            and 0 <= s[0] + dy[0] <= SIZE - PATCH
            and 0 <= s[1] + dx[0] <= SIZE - PATCH
            for s, t in pairs
        )
        assert any(
            np.array_equal(part, _square(*s)) for part in (natural, blurred) for s, _ in pairs
        )
        if blurred.any():  # smooth, unlike the noise it was cut from (mean |step| 2/3)
            both = blurred[:, 1:] & blurred[:, :-1]
            steps = np.abs(np.diff(anomalous[b], axis=1))[both]
            assert steps.mean() < 0.1


def test_one_key_puts_blob_and_rect_at_the_same_places():
    keys = jax.random.split(jax.random.PRNGKey(21), 3)
    normal = jax.random.uniform(keys[0], (BATCH, SIZE, SIZE, 3), minval=-1)
    bank = jax.random.uniform(keys[1], (3, SIZE, SIZE, 3), minval=-1)
    blob = np.asarray(run(keys[2], normal, bank, paste_shape="blob")[2])
    rect = np.asarray(run(keys[2], normal, bank, paste_shape="rect")[2])
    assert blob.any() and not (blob & ~rect).any() and rect.sum() > blob.sum()


def test_paste_shape_is_checked():
    with pytest.raises(ValueError, match="paste_shape"):
        gaaga.synthesize(
            jax.random.PRNGKey(0),
            jnp.zeros((1, SIZE, SIZE, 3)),
            jnp.zeros((1, SIZE, SIZE, 3)),
            PATCH,
            SIGMA,
            "square",
        )
    from cmaae_jax import configlib
    from configs import default

    config = default.get_config()
    assert config.anomaly.paste_shape in gaaga.PASTE_SHAPES == ("rect", "blob", "varied")
    config.anomaly.paste_shape = "square"
    with pytest.raises(configlib.ConfigError, match="anomaly.paste_shape"):
        configlib.validate(config)


def _high_frequency_energy(image):
    image = np.asarray(image, np.float64)
    return np.mean(np.diff(image, axis=0) ** 2) + np.mean(np.diff(image, axis=1) ** 2)


def test_blurred_patch_is_smoother_than_its_source():
    image = jax.random.uniform(jax.random.PRNGKey(11), (SIZE, SIZE, 3), minval=-1)
    source_energy = _high_frequency_energy(image)
    for i in range(4):
        u = jax.random.uniform(jax.random.PRNGKey(i), (gaaga.BLUR_U,))
        patch = np.asarray(gaaga.blurred_patch(u, image, PATCH, SIGMA))
        assert patch.shape == (PATCH, PATCH, 3)
        assert _high_frequency_energy(patch) < 0.05 * source_energy
        # A blend of image pixels: stays within their range and keeps the mean level.
        assert patch.min() >= float(image.min()) - 1e-5 and patch.max() <= float(image.max()) + 1e-5
        assert abs(patch.mean() - float(image.mean())) < 0.1
    # Without blur, the stretched crop of a smooth ramp is still a ramp (resize is bilinear).
    ramp = jnp.broadcast_to(jnp.linspace(-1, 1, SIZE)[:, None, None], (SIZE, SIZE, 3))
    u = jax.random.uniform(jax.random.PRNGKey(12), (gaaga.BLUR_U,))
    stretched = np.asarray(gaaga.blurred_patch(u, ramp, PATCH, 0.0))
    rows = stretched[:, 0, 0]
    assert (np.diff(rows) >= -1e-6).all() and np.allclose(stretched, stretched[:, :1])


def test_shape_masks_vary():
    u = jax.random.uniform(jax.random.PRNGKey(13), (6, gaaga.SHAPE_U))
    masks = list(np.asarray(jax.vmap(lambda v: gaaga.shape_mask(v, PATCH))(u)))
    cover = [m.mean() for m in masks]
    assert min(cover) > 0.05 and max(cover) < 0.99
    assert len({m.tobytes() for m in masks}) == 6


def test_varied_shapes_reach_thin_strokes():
    # u: a at its largest (1 of half the side), b at its smallest (1/32), exponent 2 (an
    # ellipse: u[2] = 0.5 / 6.5), no rotation, no wobble: a 128-px stroke with half-width 2 px.
    u = jnp.zeros(gaaga.SHAPE_U).at[0].set(1.0).at[2].set(0.5 / 6.5)
    mask = np.asarray(gaaga.shape_mask(u, 128, varied=True))
    assert np.flatnonzero(mask.any(axis=1)).tolist() == [62, 63, 64, 65]  # |y| < 2 of centre 64
    assert abs(mask.sum() - np.pi * 64 * 2) < 0.1 * np.pi * 64 * 2
    # Without `varied` the same numbers give a half-axis of 0.4: a blob 2 x 25.6 px high.
    assert np.asarray(gaaga.shape_mask(u, 128)).any(axis=1).sum() == 52


def test_bad_shapes_are_errors(normal, bank):
    with pytest.raises(ValueError, match="patch_size"):
        gaaga.synthesize(jax.random.PRNGKey(0), normal, bank, SIZE + 64, SIGMA)
    with pytest.raises(ValueError, match="channels"):
        gaaga.synthesize(jax.random.PRNGKey(0), normal, bank[..., :1], PATCH, SIGMA)


def test_benchmark_runs():
    assert gaaga.benchmark(image_size=64, batch=2, steps=1) > 0


def test_full_canvas_limits_paste_exactly_as_square_images(normal, bank):
    limits = jnp.full((BATCH, 2), SIZE, jnp.int32)
    for shape in ("blob", "varied"):
        plain = run(jax.random.PRNGKey(5), normal, bank, paste_shape=shape)
        limited = run(jax.random.PRNGKey(5), normal, bank, paste_shape=shape, limits_Bx2=limits)
        for x, y in zip(plain, limited, strict=True):
            np.testing.assert_array_equal(x, y)


def test_paste_places_by_hand():
    # valid 40 x 128 in a 128 canvas, patch 64: rows are shorter than the patch (top 0, the
    # shape's centre at u * 40), columns are not (top floor(u * 65), no shift).
    u = jnp.array([0.5, 0.5, 0.25, 0.999])  # paste 0 (y, x), paste 1 (y, x)
    top, shift = gaaga.paste_places(u, jnp.array([40, 128]), 64)
    np.testing.assert_array_equal(np.asarray(top), [[0, 32], [0, 64]])
    np.testing.assert_allclose(np.asarray(shift), [[0.5 * 40 - 32, 0], [0.25 * 40 - 32, 0]])


def test_shifted_shape_is_centred_where_asked():
    u = jnp.zeros(gaaga.SHAPE_U).at[0].set(0.5).at[1].set(0.5).at[2].set(0.5 / 6.5)  # a circle
    mask = np.asarray(gaaga.shape_mask(u, 64, centre_shift=(-12.0, 5.0)))
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() + 0.5 - (32 - 12)) < 0.5 and abs(xs.mean() + 0.5 - (32 + 5)) < 0.5


@pytest.mark.parametrize("shape", ["blob", "varied"])
def test_pastes_land_on_the_valid_region_of_wide_images(normal, bank, shape):
    # keep_aspect canvases: the images fill rows 0..h-1 only (h < the patch for two of them).
    heights = np.array([24, 40, 80, 128])
    limits = jnp.asarray(np.stack([heights, np.full(BATCH, SIZE)], 1), jnp.int32)
    inside = {}
    for name, lim in (("limited", limits), ("canvas", None)):
        masks = []
        for k in range(6):
            out = run(jax.random.PRNGKey(k), normal, bank, paste_shape=shape, limits_Bx2=lim)
            masks.append(np.asarray(out[2]))
        masks = np.concatenate(masks)
        valid = np.arange(SIZE)[None, :, None] < np.tile(heights, 6)[:, None, None]
        inside[name] = (masks & valid).sum() / masks.sum()
        if name == "limited":
            assert (masks & valid).reshape(len(masks), -1).any(1).all()  # each image got one
    assert inside["limited"] > 0.85 and inside["limited"] > inside["canvas"] + 0.1


def test_thinnest_half_axis_in_pixels():
    # The stroke of test_varied_shapes_reach_thin_strokes at paste 256: by default 1/32 of the
    # 128-px half side (4 px); with thinnest_px=2, 2 px as at paste 128.
    u = jnp.zeros(gaaga.SHAPE_U).at[0].set(1.0).at[2].set(0.5 / 6.5)
    relative = np.asarray(gaaga.shape_mask(u, 256, varied=True))
    assert np.flatnonzero(relative.any(axis=1)).tolist() == list(range(124, 132))  # |y| < 4
    pixels = np.asarray(gaaga.shape_mask(u, 256, varied=True, thinnest_px=2.0))
    assert np.flatnonzero(pixels.any(axis=1)).tolist() == [126, 127, 128, 129]  # |y| < 2
    # At paste 128, 2 px is 1/32 of the half side: the default's masks, bit for bit.
    us = jax.random.uniform(jax.random.PRNGKey(3), (8, gaaga.SHAPE_U))
    for v in us:
        np.testing.assert_array_equal(
            gaaga.shape_mask(v, 128, varied=True), gaaga.shape_mask(v, 128, True, thinnest_px=2.0)
        )


def _u8(images):
    return np.asarray(np.round((np.asarray(images) + 1.0) * 127.5), np.uint8)


def test_paste_on_host_is_the_synthesis_per_image_and_chunk_free(normal, bank):
    cfg = {"patch_size": PATCH, "blur_sigma": SIGMA, "paste_shape": "varied"}
    anomaly = type("Anomaly", (), {**cfg, "get": lambda self, k, d=None: cfg.get(k, d)})()
    images, key = _u8(normal), jax.random.PRNGKey(3)
    sizes = np.full((BATCH, 2), SIZE)
    a_images, a_masks = gaaga.paste_on_host(images, sizes, bank, key, anomaly, SIZE, chunk=3)
    b_images, b_masks = gaaga.paste_on_host(images, sizes, bank, key, anomaly, SIZE, chunk=1)
    np.testing.assert_array_equal(np.stack(a_images), np.stack(b_images))
    np.testing.assert_array_equal(np.stack(a_masks), np.stack(b_masks))
    for i in range(BATCH):  # image i: synthesize alone on it with fold_in(key, i)
        one = run(jax.random.fold_in(key, i), _to_float(images[i : i + 1]), bank, **cfg)
        expected = np.clip(np.round((np.asarray(one[0][0]) + 1.0) * 127.5), 0, 255)
        np.testing.assert_array_equal(a_images[i], expected.astype(np.uint8))
        np.testing.assert_array_equal(a_masks[i], np.asarray(one[2][0]))
        np.testing.assert_array_equal(a_images[i][~a_masks[i]], images[i][~a_masks[i]])
        assert a_masks[i].any()


def test_paste_on_host_keeps_pastes_on_the_valid_region_and_reflects_them():
    cfg = {"patch_size": 32, "blur_sigma": SIGMA, "paste_shape": "blob"}
    anomaly = type("Anomaly", (), {**cfg, "get": lambda self, k, d=None: cfg.get(k, d)})()
    rng = np.random.default_rng(0)
    # keep_aspect canvases of two shapes (sides multiples of 64) with valid regions inside
    images = [rng.integers(0, 256, (64, 128, 3), np.uint8) for _ in range(2)]
    images.append(rng.integers(0, 256, (128, 64, 3), np.uint8))
    sizes = np.array([[50, 128], [20, 128], [128, 40]])
    bank = np.asarray(synthetic.natural_images(2, 128, seed=1))
    out, masks = gaaga.paste_on_host(images, sizes, bank, jax.random.PRNGKey(0), anomaly, 128)
    for im, o, m, (h, w) in zip(images, out, masks, sizes, strict=True):
        assert o.shape == im.shape and m.shape == (h, w) and m.any()
        valid = o[:h, :w]
        np.testing.assert_array_equal(valid[~m], im[:h, :w][~m])
        assert np.any(valid[m] != im[:h, :w][m])
        # the padding is the reflection of the pasted valid region, as the loader pads
        rows = np.r_[np.arange(h), np.arange(h - 2, -1, -1)][: im.shape[0]]
        cols = np.r_[np.arange(w), np.arange(w - 2, -1, -1)][: im.shape[1]]
        if len(rows) == im.shape[0] and len(cols) == im.shape[1]:
            np.testing.assert_array_equal(o, valid[rows][:, cols])


def test_pastes_below_full_opacity_blend_over_the_image_at_the_same_places():
    """A zero image and a bank of ones: the blurred patch (a region of the zero image) changes
    nothing, so wherever the natural paste shows at full opacity it reads 1, and at
    `min_opacity=a` it reads the image's own natural-paste opacity, one number in [a, 1]."""
    n = 32
    zeros = jnp.zeros((n, SIZE, SIZE, 3))
    ones = jnp.ones((3, SIZE, SIZE, 3))
    key = jax.random.key(3)
    hard, _, m_hard = (np.asarray(v) for v in synthesize(key, zeros, ones, PATCH, SIGMA, "varied"))
    same, _, m_same = synthesize(key, zeros, ones, PATCH, SIGMA, "varied", min_opacity=1.0)
    np.testing.assert_array_equal(same, hard)
    np.testing.assert_array_equal(m_same, m_hard)
    assert np.all(hard[m_hard] == 1.0) and np.all(hard[~m_hard] == 0.0)
    soft, _, m_soft = (
        np.asarray(v) for v in synthesize(key, zeros, ones, PATCH, SIGMA, "varied", min_opacity=0.3)
    )
    assert np.all(m_soft[m_hard])  # the same places; the blurred paste may now show too
    assert np.all(soft[~m_soft] == 0.0) and np.all(soft[m_soft] > 0.0)
    alphas = []
    for b in range(n):
        values = soft[b][m_hard[b]].ravel()
        if values.size:
            np.testing.assert_allclose(values, values[0], rtol=1e-6)
            alphas.append(values[0])
    alphas = np.array(alphas)
    assert len(alphas) > n // 2 and np.all((alphas >= 0.3 - 1e-6) & (alphas <= 1.0))
    assert alphas.min() < 0.5 and alphas.max() > 0.8  # spread over [0.3, 1]
