"""Anomaly maps: reconstruction by grid patches and blended overlapping windows, MSFR (eq. 14)
against numpy, pmap vs jit, the score.stride option."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import configlib, map_levels, model, msfr, patches, score_options, scoring, spread

H = W = 128


@pytest.fixture(scope="module")
def setup():
    m = model.CMAAE(memory_size=16, impl="xla")
    # A jitted init with the rbg generator compiles in seconds; threefry takes ~10x longer.
    variables = jax.jit(lambda key: model.init(m, key))(jax.random.key(0, impl="unsafe_rbg"))
    return m, variables, _images(2, seed=1)


# Jitted entry points (eager flax dispatches op by op, which is slow on CPU).
_reconstruct = jax.jit(scoring.reconstruct, static_argnums=0)
_msfr = jax.jit(msfr.msfr_map, static_argnums=(0, 4))
_anomaly_maps = jax.jit(scoring.anomaly_maps, static_argnums=(0, 3, 4))
_features = jax.jit(functools.partial(model.CMAAE.apply, method="features"), static_argnums=(0, 3))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, size=(n, H, W, 3)).astype(np.float32))


def _torch_bilinear(x_Bxhxw, out_h, out_w):
    """numpy port of PyTorch's upsample_bilinear2d (align_corners=False), loop by loop."""

    def taps(out_size, in_size):
        scale = in_size / out_size
        result = []
        for o in range(out_size):
            src = max((o + 0.5) * scale - 0.5, 0.0)
            i0 = int(src)
            step = 1 if i0 < in_size - 1 else 0
            lam1 = src - i0
            result.append((i0, i0 + step, 1.0 - lam1, lam1))
        return result

    x = np.asarray(x_Bxhxw, np.float64)
    out = np.zeros((x.shape[0], out_h, out_w))
    for oy, (y0, y1, wy0, wy1) in enumerate(taps(out_h, x.shape[1])):
        for ox, (x0, x1, wx0, wx1) in enumerate(taps(out_w, x.shape[2])):
            out[:, oy, ox] = wy0 * (wx0 * x[:, y0, x0] + wx1 * x[:, y0, x1]) + wy1 * (
                wx0 * x[:, y1, x0] + wx1 * x[:, y1, x1]
            )
    return out


@pytest.mark.parametrize(
    "in_hw,out_hw",
    [
        ((8, 8), (16, 16)),  # integer factors: two taps per axis
        ((8, 4), (32, 16)),
        ((3, 5), (24, 5)),  # 8 and 1
        ((1, 2), (3, 6)),  # one row: both taps at the edge
        ((5, 7), (13, 16)),  # the rest: jax.image.resize
        ((16, 9), (5, 7)),
    ],
)
def test_resize_matches_torch_align_corners_false(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw)).astype(np.float32)
    got = msfr.resize_bilinear(jnp.asarray(x), *out_hw)
    np.testing.assert_allclose(got, _torch_bilinear(x, *out_hw), atol=1e-5)


def test_reconstruction_is_the_model_on_each_grid_patch(setup):
    m, variables, images = setup
    rec = _reconstruct(m, variables, images)
    assert rec.shape == images.shape
    one, _ = jax.jit(m.apply)(variables, images[1:2, 64:128, 0:64])
    np.testing.assert_allclose(rec[1, 64:128, 0:64], one[0], atol=1e-5)


def test_msfr_is_zero_when_reconstruction_equals_input(setup):
    m, variables, images = setup
    amap = _msfr(m, variables, images, images, (1, 2, 3))
    assert amap.shape == (2, H, W)
    np.testing.assert_allclose(amap, 0.0, atol=1e-10)


def test_local_perturbation_gives_a_local_maximum(setup):
    m, variables, images = setup
    rec = images.at[1, 70:76, 30:36].add(1.5)
    amap = np.asarray(_msfr(m, variables, images, rec, (1, 2, 3)))
    np.testing.assert_allclose(amap[0], 0.0, atol=1e-10)
    y, x = np.unravel_index(np.argmax(amap[1]), amap[1].shape)
    assert 70 - 4 <= y < 76 + 4 and 30 - 4 <= x < 36 + 4, (y, x)
    # Far from the perturbation (beyond every receptive field) nothing changes.
    assert amap[1, :50].max() == 0.0 and amap[1, :, 60:].max() == 0.0


def test_msfr_scales_and_weights_match_numpy(setup):
    m, variables, images = setup
    rec = _reconstruct(m, variables, images)
    feats = _features(m, variables, images, 3)
    feats_rec = _features(m, variables, rec, 3)
    singles = {}
    for s in (1, 2, 3):
        f, g = np.asarray(feats[s - 1], np.float64), np.asarray(feats_rec[s - 1], np.float64)
        want = _torch_bilinear(np.mean((f - g) ** 2, axis=-1), H, W)
        singles[s] = np.asarray(_msfr(m, variables, images, rec, (s,)))
        np.testing.assert_allclose(singles[s], want, rtol=1e-4, atol=1e-7 * want.max())
        assert want.max() > 0
    full = _msfr(m, variables, images, rec, (1, 2, 3))
    want = (16 * singles[1] + 64 * singles[2] + 196 * singles[3]) / 276
    np.testing.assert_allclose(full, want, rtol=1e-5, atol=1e-7 * want.max())
    two = _msfr(m, variables, images, rec, (3, 1))
    np.testing.assert_allclose(two, (16 * singles[1] + 196 * singles[3]) / 212, rtol=1e-5)
    assert score_options.RF_AREAS == {1: 16, 2: 64, 3: 196}


def test_anomaly_maps_methods(setup):
    m, variables, images = setup
    amap, rec = _anomaly_maps(m, variables, images, "pixel", (1, 2, 3))
    np.testing.assert_allclose(rec, _reconstruct(m, variables, images), atol=1e-6)
    want = np.mean(np.abs(np.asarray(images) - np.asarray(rec)), axis=-1)
    np.testing.assert_allclose(amap, want, atol=1e-6)
    np.testing.assert_allclose(scoring.make_map_fn(m, "pixel")(variables, images), want, atol=1e-6)
    amap = scoring.make_map_fn(m, "msfr", (2,))(variables, images)
    np.testing.assert_allclose(amap, _msfr(m, variables, images, rec, (2,)), rtol=1e-5)
    # median normalisation: each image's map over its own median (numpy's, per image)
    normed = scoring.make_map_fn(m, "pixel", normalize="median")(variables, images)
    np.testing.assert_allclose(
        normed, want / np.median(want, axis=(1, 2), keepdims=True), rtol=1e-5
    )
    assert not np.allclose(normed, want)
    by_sorting = scoring.make_map_fn(m, "pixel", normalize="median", median="sort")
    np.testing.assert_allclose(by_sorting(variables, images), normed, rtol=1e-6)
    # msfr_pixel: the MSFR and pixel maps, each over its own image median (numpy), averaged
    both = scoring.make_map_fn(m, "msfr_pixel", (2,))(variables, images)
    msfr = np.asarray(_msfr(m, variables, images, rec, (2,)), np.float64)
    want_both = 0.5 * (
        msfr / np.median(msfr, axis=(1, 2), keepdims=True)
        + want / np.median(want, axis=(1, 2), keepdims=True)
    )
    np.testing.assert_allclose(both, want_both, rtol=1e-4)
    # its parts unaveraged (for a reference of each), in score_options.COMPONENTS' order
    parts = scoring.make_map_fn(m, "msfr_pixel", (2,), components=True)(variables, images)
    assert score_options.COMPONENTS == ("msfr", "pixel") and parts.shape == want.shape + (2,)
    np.testing.assert_allclose(
        parts[..., 0], msfr / np.median(msfr, axis=(1, 2), keepdims=True), rtol=1e-4
    )
    np.testing.assert_allclose(
        parts[..., 1], want / np.median(want, axis=(1, 2), keepdims=True), rtol=1e-4
    )
    # the raw parts (before their medians), finished on the host: the same parts
    raw = scoring.make_map_fn(m, "msfr_pixel", (2,), components=True, raw_parts=True)(
        variables, images
    )
    np.testing.assert_allclose(raw[..., 0], msfr, rtol=1e-5)
    np.testing.assert_allclose(raw[..., 1], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(map_levels.over_median_on_host(raw), parts, rtol=1e-5)
    with pytest.raises(ValueError, match="components"):
        scoring.make_map_fn(m, "msfr", components=True)
    with pytest.raises(ValueError, match="raw parts"):
        scoring.make_map_fn(m, "msfr_pixel", raw_parts=True)
    with pytest.raises(ValueError, match="score.normalize"):
        scoring.make_map_fn(m, "pixel", normalize="mean")
    # horizontal flip: the MSFR map of the mirrored images and their reconstruction,
    # mirrored back, averaged with the images' own (random kernels are not mirror-symmetric,
    # so the two maps differ)
    mirror = jnp.asarray(np.asarray(images)[:, :, ::-1])
    rec_m = _reconstruct(m, variables, mirror)
    own = np.asarray(_msfr(m, variables, images, rec, (2,)))
    mirrored = np.asarray(_msfr(m, variables, mirror, rec_m, (2,)))[:, :, ::-1]
    flipped = scoring.make_map_fn(m, "msfr", (2,), flip="horizontal")(variables, images)
    np.testing.assert_allclose(flipped, 0.5 * (own + mirrored), rtol=1e-5, atol=1e-7)
    assert not np.allclose(mirrored, own, rtol=0.05)
    with pytest.raises(ValueError, match="score.flip"):
        scoring.make_map_fn(m, "pixel", flip="vertical")


@pytest.mark.parametrize("scales", [(), (0,), (4,), (1, 1), (1.5,)])
def test_bad_scales_and_method_are_rejected(setup, scales):
    m, variables, images = setup
    with pytest.raises(ValueError, match="score.scales"):
        scoring.make_map_fn(m, "msfr", scales)
    with pytest.raises(ValueError, match="score.method"):
        scoring.anomaly_maps(m, variables, images, method="ssim")


def test_sharding_helpers():
    x = np.arange(6 * 2).reshape(6, 2)
    padded, b = spread.pad_batch(x, 4)
    assert b == 6 and padded.shape == (8, 2) and not padded[6:].any()
    np.testing.assert_array_equal(spread.unshard(spread.shard(padded, 4))[:b], x)
    with pytest.raises(ValueError, match="pad it first"):
        spread.shard(x, 4)


def test_pmapped_map_fn_equals_jitted_on_a_ragged_batch(setup):
    m, variables, _ = setup
    d = jax.local_device_count()
    assert d == 4  # tests/conftest.py
    images = _images(6, seed=2)
    single = scoring.make_map_fn(m, "msfr")
    want = spread.apply_sharded(single, variables, images)
    multi = scoring.make_map_fn(m, "msfr", pmapped=True)
    got = spread.apply_sharded(multi, spread.replicate(variables), images, num_devices=d)
    assert got.shape == (6, H, W)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7 * float(jnp.max(want)))


def test_map_fn_keeps_the_models_convs_unless_told_otherwise(setup):
    # Numerical equality of the two implementations is tests/test_layers.py's business.
    _, variables, images = setup
    m = model.CMAAE(memory_size=16, impl="matmul")
    kept = str(jax.make_jaxpr(scoring.make_map_fn(m, "msfr"))(variables, images))
    native = str(jax.make_jaxpr(scoring.make_map_fn(m, "msfr", impl="xla"))(variables, images))
    # The CPU ("matmul") layers carry custom VJPs; the native ones are plain lax convolutions.
    assert "custom_vjp" in kept
    assert "custom_vjp" not in native and "conv_general_dilated" in native


_reconstruct_strided = jax.jit(scoring.reconstruct, static_argnums=(0, 3))


@pytest.fixture(scope="module")
def ae_setup(setup):
    # A freshly initialised model's output hardly depends on its input (small kernels; the
    # CMA-AE's softmax gates also shrink the code ~500x). The memory-free variant with its
    # kernels scaled 3x maps different windows to clearly different outputs.
    m = model.CMAAE(variant="ae", impl="xla")
    variables = jax.jit(lambda key: model.init(m, key))(jax.random.key(0, impl="unsafe_rbg"))
    variables = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 3.0 if "kernel" in jax.tree_util.keystr(path) else a, variables
    )
    return m, variables, setup[2]


def test_stride_64_reconstruction_is_the_grid_path_bit_for_bit(ae_setup):
    m, variables, images = ae_setup

    @jax.jit
    def grid_path(variables, images_BxHxWx3):  # the reconstruction before strides existed
        grid = patches.to_grid(images_BxHxWx3, 64)
        rec_grid, _ = m.apply(variables, grid, train=False)
        return patches.from_grid(rec_grid, 2, H, W)

    want = grid_path(variables, images)
    np.testing.assert_array_equal(_reconstruct_strided(m, variables, images, 64), want)
    np.testing.assert_array_equal(_reconstruct(m, variables, images), want)


def test_strided_reconstruction_blends_the_model_on_each_window(ae_setup):
    m, variables, images = ae_setup
    stride, x = 32, np.asarray(images)
    corners = [(y, xx) for y in range(0, H - 63, stride) for xx in range(0, W - 63, stride)]
    crops = np.stack([img[y : y + 64, xx : xx + 64] for img in x for y, xx in corners])
    rec_crops, _ = jax.jit(functools.partial(m.apply, train=False))(variables, crops)
    rec_crops = np.asarray(rec_crops, np.float64)
    hann = np.sin(np.pi * (np.arange(64) + 0.5) / 64) ** 2
    weight = np.outer(hann, hann)[:, :, None]
    acc, norm = np.zeros(x.shape), np.zeros(x.shape[:3] + (1,))
    for k, crop in enumerate(rec_crops):
        (y, xx), i = corners[k % len(corners)], k // len(corners)
        acc[i, y : y + 64, xx : xx + 64] += weight * crop
        norm[i, y : y + 64, xx : xx + 64] += weight
    got = _reconstruct_strided(m, variables, images, stride)
    np.testing.assert_allclose(got, acc / norm, atol=1e-5)
    grid = np.asarray(_reconstruct(m, variables, images))
    assert np.abs(np.asarray(got) - grid).max() > 1e-2  # the overlaps really changed it
    # The pixel map and the map fn see the same blended reconstruction.
    want = np.mean(np.abs(x - acc / norm), axis=-1)
    amap = scoring.make_map_fn(m, "pixel", stride=stride)(variables, images)
    np.testing.assert_allclose(amap, want, atol=1e-5)
    amap = scoring.make_map_fn(m, "msfr", (1,), stride=stride)(variables, images)
    np.testing.assert_allclose(amap, _msfr(m, variables, images, got, (1,)), rtol=1e-4)


def test_bad_stride_is_rejected_by_scoring_and_config(setup):
    m, variables, images = setup
    for stride in (0, 24, 128, 64.0):
        with pytest.raises(ValueError, match="score.stride"):
            scoring.make_map_fn(m, "msfr", stride=stride)
        with pytest.raises(ValueError, match="score.stride"):
            scoring.anomaly_maps(m, variables, images, stride=stride)
    from configs import default

    config = default.get_config()
    assert config.score.stride == 16  # the default (RESULTS.md, fifth session)
    assert score_options.STRIDES == (8, 16, 32, 64)
    for stride in (24, 0):
        config.score.stride = stride
        with pytest.raises(configlib.ConfigError, match="score.stride"):
            configlib.validate(config)
    config.score.stride = 16
    configlib.validate(config)


@pytest.mark.parametrize("method,n", [("msfr", 1), ("pixel", 2)])
def test_spread_map_fn_equals_the_single_device_one(setup, method, n):
    # Windows split over the 4 virtual devices (9 windows at stride 32: uneven), the images
    # and their reconstructions encoded by bands of rows (tests/test_spread.py); the same maps.
    m, variables, _ = setup
    images = _images(n, seed=3)
    want = scoring.make_map_fn(m, method, (1, 2), stride=32)(variables, images)
    spread = scoring.make_map_fn(m, method, (1, 2), stride=32, spread=True)
    np.testing.assert_allclose(
        spread(variables, images), want, rtol=1e-5, atol=1e-6 * float(jnp.max(want))
    )
    hlo = spread.lower(variables, images).compile().as_text()
    assert "num_partitions=4" in hlo
    # every convolution runs on one device's share: ceil(9 n / 4) windows, or a band of rows
    # of the n images (leading dimension n = 1), never all 9 n windows
    leading = {int(d) for d in re.findall(r"= f32\[(\d+),[^=]*? convolution\(", hlo)}
    assert leading and leading <= {-(-9 * n // 4), -(-2 * n // 4)}, leading
