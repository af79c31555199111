"""Image scores (`image_score`): max, top, top_inner and the rim chosen from normal maps, each
against sorting, cropping and counting by hand; evaluation's rim on a folder dataset with a
fixed map (the grey level) in place of a model."""

import json

import numpy as np
import pytest
from conftest import GreyScorer, tiny_config
from PIL import Image

from cmaae_jax import calibration, datasets, evaluate, image_score, inference, metrics
from cmaae_jax import workdir as workdir_lib


def test_top_image_score_is_the_mean_of_the_highest_share_of_pixels():
    rng = np.random.default_rng(4)
    maps = rng.random((3, 100, 100)).astype(np.float32)
    k = round(image_score.TOP_SHARE * 100 * 100)  # 3 of 10,000 pixels
    by_hand = [np.sort(m.ravel())[::-1][:k].mean() for m in maps]
    np.testing.assert_allclose(image_score.image_scores(maps, "top"), by_hand, rtol=1e-6)
    np.testing.assert_array_equal(image_score.image_scores(maps, "max"), maps.max(axis=(1, 2)))
    assert image_score.image_scores(np.array([[0.5, 2.0]]), "top")[0] == 2.0  # at least one
    # one normal image with a lone spike, one defective image with k high pixels: the maximum
    # ranks them the wrong way round, the top mean the right way (AUROC 0 and 1)
    spike, thin = np.zeros((100, 100), np.float32), np.zeros((100, 100), np.float32)
    spike[50, 50] = 10.0
    thin[20, 30 : 30 + k] = 5.0
    pair, masks = np.stack([spike, thin]), np.zeros((2, 100, 100), np.uint8)
    masks[1, 20, 30 : 30 + k] = 1
    assert metrics.evaluate_maps(pair, masks)["image_auroc"] == 0.0
    acc = metrics.PixelAccumulator(image_score="top")
    acc.update(pair, masks)
    assert acc.result()["image_auroc"] == 1.0  # 10 / 3 against 5
    with pytest.raises(ValueError, match="eval.image_score"):
        metrics.PixelAccumulator(image_score="mean")


def test_top_inner_leaves_the_rim_out_of_the_top_mean():
    rng = np.random.default_rng(5)
    maps = rng.random((2, 100, 120)).astype(np.float32)
    inner = maps[:, 5:95, 5:115]  # 90 x 110 = 9,900 pixels: the top 3
    by_hand = [np.sort(m.ravel())[-3:].mean() for m in inner]
    got = image_score.image_scores(maps, "top_inner", rim=5)
    np.testing.assert_allclose(got, by_hand, rtol=1e-6)
    # rim 0 is `top`; a rim that would leave nothing keeps the whole map; others ignore it
    whole = image_score.image_scores(maps, "top")
    np.testing.assert_array_equal(image_score.image_scores(maps, "top_inner", 0), whole)
    np.testing.assert_array_equal(image_score.image_scores(maps, "top_inner", 50), whole)
    np.testing.assert_array_equal(image_score.image_scores(maps, "max", 5), maps.max(axis=(1, 2)))
    # a normal map's spike on its border outranks a defect inside with `top`, not with the rim
    normal, defect = np.zeros((100, 100), np.float32), np.zeros((100, 100), np.float32)
    normal[0, 40:43] = 9.0
    defect[50, 40:43] = 5.0
    pair, masks = np.stack([normal, defect]), np.zeros((2, 100, 100), np.uint8)
    masks[1, 50, 40:43] = 1
    for how, rim, want in (("top", 0, 0.0), ("top_inner", 2, 1.0)):
        acc = metrics.PixelAccumulator(image_score=how, image_rim=rim)
        acc.update(pair, masks)
        assert acc.result()["image_auroc"] == want, how


def test_band_shares_count_top_pixels_and_area_near_the_sides_by_brute_force():
    rng = np.random.default_rng(6)
    maps = [rng.random(hw).astype(np.float32) for hw in ((70, 90), (64, 64), (40, 130))]
    bands = [1, 2, 5]
    top_in, area_in, tops, area = np.zeros(3), np.zeros(3), 0, 0
    for m in maps:
        h, w = m.shape
        k = max(1, round(0.0003 * h * w))
        order = np.argsort(m.ravel())[::-1][:k]  # distinct random values: no ties
        for flat in range(h * w):
            i, j = divmod(flat, w)
            distance = min(i, h - 1 - i, j, w - 1 - j)
            for n, b in enumerate(bands):
                area_in[n] += distance < b
                top_in[n] += distance < b and flat in order
        tops, area = tops + k, area + h * w
    s, a = image_score.band_shares(maps, bands)
    np.testing.assert_allclose(s, top_in / tops)
    np.testing.assert_allclose(a, area_in / area)


def _maps_with_top_pixels(rows, size=256):
    """One size x size map per row: a faint ramp with its 20 highest pixels (`top_count` of
    65,536) in that row, columns 100-119."""
    out = []
    for r in rows:
        m = np.linspace(0.0, 0.1, size * size, dtype=np.float32).reshape(size, size)
        m[r, 100:120] = 1.0
        out.append(m)
    return out


def test_normal_rim_is_the_widest_band_the_top_pixels_crowd_three_times_over():
    assert image_score.rim_bands(256) == [1, 2, 3, 4, 6, 8]
    assert image_score.rim_bands(512) == [2, 4, 6, 8, 12, 16]
    assert image_score.rim_bands(128) == [1, 2, 3, 4]  # 0.5 -> 1 and 1.5 -> 2 merge

    def area(b):  # share of a 256 x 256 map within b px of a side
        return 1 - ((256 - 2 * b) / 256) ** 2

    # every map's top pixels 3 px from the top: inside bands 4, 6, 8 (share 1 >= 3 x area)
    assert 3 * area(8) < 1
    assert image_score.normal_rim(_maps_with_top_pixels([3] * 3), 256) == 8
    # a quarter of them on the border: share 1/4 in every band; 3 x area(4) = 0.185 <= 1/4,
    # 3 x area(6) = 0.274 > 1/4
    assert 3 * area(4) <= 0.25 < 3 * area(6)
    assert image_score.normal_rim(_maps_with_top_pixels([0, 128, 128, 128]), 256) == 4
    assert image_score.normal_rim(_maps_with_top_pixels([128] * 4), 256) == 0  # centre: none


def _write_border_dataset(root):
    """good/ (8), test_good/ (4): grey noise below 100 with a 250 pixel on the top row and the
    second row at 120; defective/ (4, no masks): the same noise with a 200 square inside."""
    rng = np.random.default_rng(2)
    for folder, n in (("good", 8), ("test_good", 4), ("defective", 4)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 100, (64, 64)).astype(np.uint8)
            if folder == "defective":
                a[24:32, 20:28] = 200
            else:
                a[0, 10 + 5 * i], a[1] = 250, 120
            Image.fromarray(a).save(root / folder / f"{i}.png")


def test_rims_are_recorded_only_where_an_option_leaves_them_out():
    maps = _maps_with_top_pixels([3] * 3)  # rim 8 at 256 px (above)
    config = tiny_config("unused", data__image_size=256)
    for how, threshold_rim, want in (
        ("top", False, (0, 0)),
        ("top_inner", False, (8, 0)),
        ("top", True, (0, 8)),
        ("top_inner", True, (8, 8)),
    ):
        config.eval.image_score, config.eval.threshold_rim = how, threshold_rim
        got = calibration.rims(maps, config)
        assert (got["image_rim"], got["threshold_rim"]) == want, (how, threshold_rim)


@pytest.mark.parametrize("how, threshold_rim", [("top", False), ("top_inner", True)])
def test_evaluation_chooses_the_rim_on_held_out_maps_and_records_it(
    how, threshold_rim, tmp_path, monkeypatch
):
    """Held-out maps (the grey level) put their highest pixel on the border: bands 1 and 2 of
    a 64 px image (`rim_bands`) hold it in every map, 3 x their area (0.18, 0.36) <= 1, so the
    rim is 2 and the normal images' spikes no longer outrank the defects. With
    `eval.threshold_rim` the quantile rule's threshold is that of the held-out pixels 2 px or
    more inside."""
    root, workdir = tmp_path / "data", tmp_path / "work"
    _write_border_dataset(root)
    config = tiny_config(root, data__format="folder", eval__max_pictures=0)
    config.eval.image_score, config.eval.threshold_rim = how, threshold_rim
    workdir.mkdir()
    workdir_lib.save_config(workdir, config)
    monkeypatch.setattr(inference, "restore_variables", lambda c, w, step=None: (3, {}))
    monkeypatch.setattr(inference, "Scorer", GreyScorer)
    result = evaluate.evaluate(config, workdir)
    saved = json.loads(workdir_lib.eval_metrics_path(workdir).read_text())
    rim = 2 if how == "top_inner" else 0
    assert saved["image_score"] == how and saved["image_rim"] == rim
    assert saved["threshold_rim"] == (2 if threshold_rim else 0)
    # `top` of a 64 x 64 map is its maximum (1 of 4,096 pixels): 250 against 200
    assert result["image_auroc"] == (1.0 if how == "top_inner" else 0.0)
    assert result["per_type"]["defective"]["image_auroc"] == result["image_auroc"]
    val = datasets.load_splits(config)["val"].images  # grey PNGs, read as 3 equal channels
    grey = [np.asarray(im, np.float32)[..., 0] / 255.0 for im in val]
    inside = [g[2:62, 2:62] if threshold_rim else g for g in grey]
    want = np.quantile(np.concatenate([g.ravel() for g in inside]), 0.999)
    assert result["threshold"] == pytest.approx(float(want), rel=1e-6)
    assert (want < 100 / 255) == threshold_rim  # the whole maps' quantile is the bright row's
