"""Maps over their own level (map_levels): brute-force loops and hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import map_levels


def _reflect_index(i, n):
    """Half-sample symmetric reflection of index i into [0, n) (d c b a | a b c d | d c)."""
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - i - 1
    return i


def _brute_box(m_HxW, side, stat):
    h, w = m_HxW.shape
    half = side // 2
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            box = [
                m_HxW[_reflect_index(y + dy, h), _reflect_index(x + dx, w)]
                for dy in range(-half, half + 1)
                for dx in range(-half, half + 1)
            ]
            out[y, x] = stat(box)
    return out


def _brute_upsample(c_hxw, factor):
    """Bilinear, half-pixel centres, clamped at the border (PyTorch align_corners=False)."""
    h, w = c_hxw.shape
    out = np.zeros((h * factor, w * factor))
    for y in range(h * factor):
        for x in range(w * factor):
            sy = min(max((y + 0.5) / factor - 0.5, 0), h - 1)
            sx = min(max((x + 0.5) / factor - 0.5, 0), w - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            top = (1 - fx) * c_hxw[y0, x0] + fx * c_hxw[y0, x1]
            bottom = (1 - fx) * c_hxw[y1, x0] + fx * c_hxw[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("side", [1, 3, 5])
def test_box_mean_matches_a_loop(side):
    m = np.random.default_rng(side).random((2, 7, 9)).astype(np.float32)
    got = np.asarray(map_levels.box_mean(jnp.asarray(m), side))
    for b in range(2):
        np.testing.assert_allclose(got[b], _brute_box(m[b], side, np.mean), rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        map_levels.box_mean(jnp.asarray(m), 4)


def _middle_by_sorting(row):
    """The median by hand: sort, then the middle value or the mean of the middle two."""
    ordered, n = sorted(float(v) for v in row), len(row)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


@pytest.mark.parametrize("n", [1, 2, 7, 10, 601])
def test_median_by_selection_is_the_sorted_middle(n):
    rng = np.random.default_rng(n)
    rows = rng.normal(size=(3, n)).astype(np.float32) * 10.0 ** rng.integers(-30, 30, (3, 1))
    rows[0, : n // 2] = rows[0, -1]  # ties, the middle pair equal where n is even
    if n >= 7:
        rows[1, :4] = [0.0, -0.0, np.float32(1e-45), -np.float32(1e-45)]  # zeros, subnormals
    got = np.asarray(map_levels.median_last_axis(jnp.asarray(rows)))
    want = np.array([_middle_by_sorting(r) for r in rows], np.float32)
    np.testing.assert_array_equal(got, want)  # exact: the selection finds the values
    sorted_ = np.asarray(map_levels.median_last_axis(jnp.asarray(rows), "sort"))
    np.testing.assert_allclose(sorted_, want, rtol=1e-6)
    stacked = rows.reshape(3, 1, n).repeat(2, axis=1)  # leading axes kept: [3, 2]
    np.testing.assert_array_equal(
        map_levels.median_last_axis(jnp.asarray(stacked)), want[:, None].repeat(2, 1)
    )
    with pytest.raises(ValueError, match="median"):
        map_levels.median_last_axis(jnp.asarray(rows), "mean")


def test_cell_median_matches_a_loop():
    cell, cells = 2, 3
    m = np.random.default_rng(1).random((1, 10, 8)).astype(np.float32)
    pooled = m[0].reshape(5, cell, 4, cell).mean(axis=(1, 3))
    want = _brute_upsample(_brute_box(pooled, cells, np.median), cell)
    for median in map_levels.MEDIANS:
        got = np.asarray(map_levels.cell_median(jnp.asarray(m), cells, cell, median))
        np.testing.assert_allclose(got[0], want, rtol=1e-5)
    with pytest.raises(ValueError, match="cells"):
        map_levels.cell_median(jnp.asarray(m[:, :9]), cells, cell)


def test_normalize_maps_by_hand():
    # Flat level 1 with a 40 x 40 px square of 10 in a 256 x 256 map; at the square's centre:
    # median: 10 / 1. local_mean (65 px box, the square inside): box mean
    # (1600 * 10 + 2625 * 1) / 4225, so 10 / (that + 1). local_median (17 cells of 8 px =
    # 136 px box): the square is 25 of the 289 cells, the median stays 1: 10 / (1 + 1).
    m = np.ones((1, 256, 256), np.float32)
    m[0, 108:148, 108:148] = 10.0
    centre = {
        k: float(map_levels.normalize_maps(jnp.asarray(m), k)[0, 128, 128])
        for k in map_levels.NORMALIZE
    }
    assert centre["none"] == 10.0
    np.testing.assert_allclose(centre["median"], 10.0, rtol=1e-6)
    np.testing.assert_allclose(centre["local_mean"], 10.0 / (18625 / 4225 + 1), rtol=1e-5)
    np.testing.assert_allclose(centre["local_median"], 10.0 / 2.0, rtol=1e-5)
    # far from the square every option sees level 1 (median and local level 1)
    far = map_levels.normalize_maps(jnp.asarray(m), "local_median")[0, 10, 10]
    np.testing.assert_allclose(float(far), 0.5, rtol=1e-5)


def test_over_median_on_host_is_the_device_median_normalisation():
    rng = np.random.default_rng(2)
    maps = rng.random((3, 20, 30)).astype(np.float32)  # 600 pixels: an even count
    by_hand = maps / np.median(maps.reshape(3, -1), axis=1)[:, None, None]
    np.testing.assert_allclose(map_levels.over_median_on_host(maps), by_hand, rtol=1e-6)
    device = np.asarray(map_levels.normalize_maps(jnp.asarray(maps), "median"))
    np.testing.assert_allclose(map_levels.over_median_on_host(maps), device, rtol=1e-6)
    parts = np.stack([maps, 5 * maps[:, ::-1]], -1)  # [N, H, W, 2]: each part on its own
    got = map_levels.over_median_on_host(parts)
    np.testing.assert_allclose(got[..., 0], by_hand, rtol=1e-6)
    np.testing.assert_allclose(got[..., 1], by_hand[:, ::-1], rtol=1e-6)


@pytest.mark.parametrize("normalize", ["median", "local_mean", "local_median"])
def test_normalize_maps_is_scale_free(normalize):
    m = np.random.default_rng(2).random((2, 64, 128)).astype(np.float32) + 0.1
    one = np.asarray(map_levels.normalize_maps(jnp.asarray(m), normalize))
    scaled = np.asarray(map_levels.normalize_maps(jnp.asarray(37.0 * m), normalize))
    np.testing.assert_allclose(scaled, one, rtol=1e-4)
    assert not np.allclose(one, m)


def test_unknown_normalize_names_the_field():
    with pytest.raises(ValueError, match="score.normalize"):
        map_levels.normalize_maps(jnp.ones((1, 8, 8)), "local")
