"""The map at several image scales (`score.pyramid`): block means, the resize back, the
geometric mean, and the whole map function against its levels composed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import configlib, model, patches, pyramid, score_options, scoring, spread
from configs import default


def test_shrink_is_block_means_reflected_to_whole_patches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 64, 192, 3)).astype(np.float32)
    got = np.asarray(pyramid.shrink(jnp.asarray(x), 2))
    assert got.shape == (2, 64, 128, 3)  # 32 x 96 reflected to 64 x 128
    means = np.zeros((2, 32, 96, 3))
    for i in range(32):
        for j in range(96):
            means[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean((1, 2))
    np.testing.assert_allclose(got[:, :32, :96], means, rtol=1e-5, atol=1e-6)
    # below and to the right: the mirror image, the last row / column repeated first
    np.testing.assert_allclose(got[:, 32:64, :96], means[:, ::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, :32, 96:128], means[:, :, 95:63:-1], rtol=1e-5, atol=1e-6)
    # factor 4: 16 x 48 block means padded by more than their own size (48 rows), which
    # numpy's symmetric padding continues by reflecting again
    quarter = x[:1, :, :, :1].reshape(1, 16, 4, 48, 4, 1).mean((2, 4))
    want = np.pad(quarter, ((0, 0), (0, 48), (0, 16), (0, 0)), mode="symmetric")
    got4 = np.asarray(pyramid.shrink(jnp.asarray(x[:1, :, :, :1]), 4))
    np.testing.assert_allclose(got4, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pyramid factor 4"):
        pyramid.shrink(jnp.zeros((1, 66, 64, 3)), 4)


def test_grow_puts_each_block_value_at_its_block_centre():
    # A ramp v(i) = 3 i over the small map's rows (constant along columns): bilinear
    # interpolation of a line is the line, so full-scale row y (block row (y + 1/2) / 2 - 1/2
    # on the half-pixel grid) holds 3 ((y + 1/2) / 2 - 1/2) away from the clamped sides.
    small = np.tile(3.0 * np.arange(64, dtype=np.float32)[:, None], (1, 64))[None]
    got = np.asarray(pyramid.grow(jnp.asarray(small), 2, 64, 96))  # crop 32 x 48, then grow
    assert got.shape == (1, 64, 96)
    y = np.arange(1, 63)
    np.testing.assert_allclose(got[0, 1:63, 10], 3.0 * ((y + 0.5) / 2 - 0.5), rtol=1e-5)
    np.testing.assert_allclose(got[0, 0], 0.0, atol=1e-6)  # clamped at the top
    np.testing.assert_allclose(got[0, 63], 3.0 * 31, rtol=1e-6)  # the crop's last row
    np.testing.assert_array_equal(pyramid.grow(jnp.asarray(small), 1, 64, 64), small)


def test_combine_is_the_geometric_mean():
    a = jnp.asarray([[[4.0, 0.0], [1.0, 2.0]]])
    b = jnp.asarray([[[9.0, 5.0], [1.0, 8.0]]])
    got = np.asarray(pyramid.combine([a, b]))
    np.testing.assert_allclose(got, [[[6.0, np.sqrt(5e-12)], [1.0, 4.0]]], rtol=1e-5)
    np.testing.assert_array_equal(pyramid.combine([a]), a)  # one level: the map as it is
    # scale-free where the maps are positive: one level times c multiplies it by sqrt(c)
    scaled = np.asarray(pyramid.combine([4.0 * a, b]))
    positive = np.asarray(a) > 0
    np.testing.assert_allclose(scaled[positive], 2.0 * got[positive], rtol=1e-5)


@pytest.mark.parametrize("levels", [(), (2,), (1, 1), (1, 3), (1, 8)])
def test_bad_pyramids_are_rejected_in_one_line(levels):
    with pytest.raises(ValueError, match="score.pyramid"):
        pyramid.check_pyramid(levels)
    config = default.get_config()
    config.score.pyramid = levels
    with pytest.raises(configlib.ConfigError, match="score.pyramid"):
        configlib.validate(config, num_devices=1)
    assert pyramid.check_pyramid((2, 1)) == (1, 2)


@pytest.fixture(scope="module")
def net():
    m = model.CMAAE(memory_size=16, impl="xla")
    variables = jax.jit(lambda key: model.init(m, key))(jax.random.key(0, impl="unsafe_rbg"))
    return m, variables


@pytest.mark.parametrize("method", ["msfr", "pixel"])
def test_map_fn_combines_its_levels_as_composed_by_hand(net, method):
    """levels (1, 2): sqrt(map of the image x the half-size image's map resized back), each
    level by the one-scale map function; then the median normalisation."""
    m, variables = net
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(2, 64, 128, 3)).astype(np.float32)
    one = scoring.make_map_fn(m, method, (1,), stride=32)
    full = np.asarray(one(variables, jnp.asarray(x)), np.float64)
    half = x.reshape(2, 32, 2, 64, 2, 3).mean((2, 4))
    half = np.pad(half, ((0, 0), (0, 32), (0, 0), (0, 0)), mode="symmetric")  # 64 x 64
    small = np.asarray(one(variables, jnp.asarray(half)))[:, :32, :64]
    grown = np.asarray(jax.image.resize(small, (2, 64, 128), "bilinear", antialias=False))
    want = np.sqrt(full * grown)
    two = scoring.make_map_fn(m, method, (1,), stride=32, levels=(1, 2))
    got = np.asarray(two(variables, jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-8)
    assert not np.allclose(got, full, rtol=0.05)  # the half-size level changed the map
    normed = scoring.make_map_fn(m, method, (1,), normalize="median", stride=32, levels=(1, 2))
    np.testing.assert_allclose(
        normed(variables, jnp.asarray(x)),
        want / np.median(want, axis=(1, 2), keepdims=True),
        rtol=2e-4,
    )


def test_spread_pyramid_equals_the_single_device_one(net):
    m, variables = net
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, size=(1, 128, 192, 3)), jnp.float32)
    options = dict(method="msfr", scales=(1, 2), stride=32, levels=(1, 2))
    alone = scoring.make_map_fn(m, **options)(variables, x)
    spread_fn = scoring.make_map_fn(m, spread=True, **options)
    got = spread_fn(spread.put_variables(variables), x)
    np.testing.assert_allclose(got, alone, rtol=2e-4, atol=1e-7)


def test_map_options_read_from_a_config():
    config = default.get_config()
    config.score.pyramid = (1, 2)
    options = score_options.map_options(config.score)
    assert options["levels"] == (1, 2) and options["stride"] == config.score.stride
    del config.score["pyramid"]  # a run saved before the option existed: one scale
    assert score_options.map_options(config.score)["levels"] == (1,)


def _checkerboards(n: int, h: int, w: int) -> np.ndarray:
    """Image i: a one-pixel checkerboard of 10 i and 10 i + 1 (2x2 block means: 10 i + 0.5)."""
    board = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(np.float32)
    return np.stack([np.repeat((10.0 * i + board)[..., None], 3, -1) for i in range(n)])


def test_scaled_crops_split_the_images_over_the_scales():
    x = _checkerboards(4, 128, 256)
    x[:, :, 128:] = 1000.0  # outside the valid region (limits below): never cropped
    limits = np.tile([[128, 128]], (4, 1))
    mask = np.zeros((4, 128, 256), bool)
    mask[:, ::2, ::2] = True  # one pixel of each 2x2 block
    key = jax.random.PRNGKey(3)
    xs, ys, ms = pyramid.scaled_crops(
        key,
        jnp.asarray(x),
        5,
        jnp.asarray(2 * x),
        jnp.asarray(mask),
        scales=(1, 2),
        limits_Nx2=jnp.asarray(limits),
    )
    xs, ys, ms = map(np.asarray, (xs, ys, ms))
    assert xs.shape == (20, 64, 64, 3) and ms.shape == (20, 64, 64)
    assert xs.max() < 1000  # the valid region, halved at scale 2
    np.testing.assert_array_equal(ys, 2 * xs)  # the target follows its image
    full, half = xs[:10], xs[10:]  # two images' five crops at each scale, scale 1 first
    assert np.all(full == np.round(full)) and np.all(half % 10 == 0.5)
    images_full = {int(v) // 10 for v in np.unique(full)}
    images_half = {int(v) // 10 for v in np.unique(half)}
    assert len(images_full) == len(images_half) == 2 and images_full | images_half == {0, 1, 2, 3}
    assert ms[10:].all()  # every 2x2 block holds a masked pixel
    # at scale 1 the mask is its image's: a quarter of every crop, on checkerboard zeros
    np.testing.assert_array_equal(ms[:10].mean((1, 2)), 0.25)
    assert np.all(full[..., 0][ms[:10]] % 10 == 0)
    # one scale is exactly `patches.random_crops`
    one = pyramid.scaled_crops(key, jnp.asarray(x), 5, limits_Nx2=jnp.asarray(limits))
    np.testing.assert_array_equal(
        one[0], patches.random_crops(key, jnp.asarray(x), 5, 64, limits_Nx2=jnp.asarray(limits))[0]
    )
    with pytest.raises(ValueError, match="cannot be split"):
        pyramid.scaled_crops(key, jnp.asarray(x[:1]), 5, scales=(1, 2))


def test_crop_scales_are_checked_in_one_line():
    c = default.get_config()
    c.train.crop_scales = (1, 3)
    with pytest.raises(ValueError, match="train.crop_scales"):
        configlib.validate(c, num_devices=2)
    c.train.crop_scales = (1, 2, 4)
    c.train.batch_size, c.train.crops_per_image = 64, 16  # 4 images: 2 per device, 3 scales
    with pytest.raises(ValueError, match="at least one image per scale"):
        configlib.validate(c, num_devices=2)
