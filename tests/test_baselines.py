"""Non-learned baselines: hand-computed maps, and perfect detection of planted dark spots."""

import numpy as np
import pytest

from cmaae_jax import baselines, layouts


def _split(images, masks, kinds):
    labels = np.array([k != "good" for k in kinds], np.int32)
    return layouts.Split(images, masks, labels, [f"{i}.png" for i in range(len(kinds))], kinds)


def test_mean_image_by_hand():
    train = np.stack([np.full((2, 2, 3), 100, np.uint8), np.full((2, 2, 3), 200, np.uint8)])
    img = np.full((1, 2, 2, 3), 51, np.uint8)
    img[0, 0, 1] = (0, 255, 255)  # grey 170
    got = baselines.mean_image(img, train)
    want = np.abs(np.array([[[51, 170], [51, 51]]]) - 150) / 255.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_mean_image_z_by_hand():
    # Two positions: one that never varies in training (var 0), one that varies (var 0.01).
    train = np.zeros((2, 1, 2, 3), np.uint8)
    train[0, 0, 1], train[1, 0, 1] = 0, 51  # grey 0 and 0.2: mean 0.1, var 0.01
    img = np.full((1, 1, 2, 3), 51, np.uint8)  # grey 0.2 at both positions
    median_var = 0.005  # median of (0, 0.01)
    want = [[0.2 / np.sqrt(median_var), 0.1 / np.sqrt(0.01 + median_var)]]
    np.testing.assert_allclose(baselines.mean_image_z(img, train), [want], rtol=1e-5)


def test_local_contrast_of_a_flat_image_is_zero_and_peaks_at_a_spot():
    img = np.full((1, 16, 16, 3), 120, np.uint8)
    assert np.abs(baselines.local_contrast(img, 2.0)).max() == pytest.approx(0.0, abs=1e-6)
    img[0, 5, 9] = 20
    m = baselines.local_contrast(img, 2.0)[0]
    assert np.unravel_index(np.argmax(m), m.shape) == (5, 9)
    assert m[5, 9] < 100 / 255.0  # the blur keeps part of the spot in its own neighbourhood


def test_evaluate_finds_planted_spots_and_reports_per_type():
    rng = np.random.default_rng(0)
    n, s = 12, 32
    kinds = ["good"] * 6 + ["spot"] * 3 + ["line"] * 3
    imgs = (120 + rng.integers(-3, 4, (n, s, s, 1))).repeat(3, -1).astype(np.uint8)
    masks = np.zeros((n, s, s), np.uint8)
    for i in range(6, 9):
        imgs[i, 10:13, 10:13], masks[i, 10:13, 10:13] = 30, 1
    for i in range(9, 12):
        imgs[i, 20, 4:28], masks[i, 20, 4:28] = 30, 1
    normal = (120 + rng.integers(-3, 4, (8, s, s, 1))).repeat(3, -1).astype(np.uint8)
    zeros = np.zeros((8, s, s), np.uint8)
    splits = {
        "train": _split(normal, zeros, ["good"] * 8),
        "val": _split(normal[:4], zeros[:4], ["good"] * 4),
        "test": _split(imgs, masks, kinds),
    }
    r = baselines.evaluate(splits, "local_contrast", sigma=2.0, quantile=0.99)
    assert r["pixel_auroc"] > 0.99 and r["image_auroc"] == 1.0
    assert sorted(r["per_type"]) == ["line", "spot"]
    assert all(t["num_images"] == 9 for t in r["per_type"].values())  # 3 defective + 6 good
    with pytest.raises(ValueError, match="baseline method"):
        baselines.evaluate(splits, "nope")


def test_pastes_rule_thresholds_baseline_maps_by_brute_force(monkeypatch):
    import scipy.ndimage
    from conftest import tiny_config

    from cmaae_jax import gaaga

    rng = np.random.default_rng(1)
    s = 32
    normal = (120 + rng.integers(-6, 7, (8, s, s, 1))).repeat(3, -1).astype(np.uint8)
    zeros = np.zeros((8, s, s), np.uint8)
    val = normal[:4]
    pasted, paste_masks = val.copy(), np.zeros((4, s, s), bool)
    for i in range(4):  # pastes of several contrasts and sizes
        rows = slice(8, 10 + 2 * i)
        pasted[i, rows, 5:20], paste_masks[i, rows, 5:20] = 60 + 15 * i, True
    calls = []

    def fake_paste(images_u8, *args):
        calls.append(np.asarray(images_u8).copy())
        return list(pasted), list(paste_masks)

    monkeypatch.setattr(gaaga, "paste_on_host", fake_paste)
    splits = {
        "train": _split(normal[4:], zeros[4:], ["good"] * 4),
        "val": _split(val, zeros[:4], ["good"] * 4),
        "test": _split(pasted, paste_masks.astype(np.uint8), ["spot"] * 4),
    }
    prior = 0.01
    config = tiny_config(  # whole maps: the rim's own test is tests/test_image_score.py
        "unused", eval__threshold_rule="pastes", eval__paste_prior=prior, eval__threshold_rim=False
    )
    got = baselines.evaluate(splits, "local_contrast", 2.0, 0.99, config)
    assert len(calls) == 1 and np.array_equal(calls[0], val)  # the held-out images are pasted

    def contrast(images):  # |grey - its Gaussian blur|, by hand
        g = images.astype(np.float32).mean(-1) / 255.0
        blurred = [scipy.ndimage.gaussian_filter(x, 2.0, mode="reflect") for x in g]
        return np.abs(g - np.stack(blurred))

    neg = np.concatenate([contrast(val).ravel(), contrast(pasted)[~paste_masks]])
    pos = contrast(pasted)[paste_masks]

    def f1(t):
        tpr, fpr = np.mean(pos >= t), np.mean(neg >= t)
        return 2 * prior * tpr / (prior * tpr + prior + (1 - prior) * fpr)

    best = max(np.unique(np.concatenate([neg, pos])), key=lambda t: (f1(t), t))
    assert got["threshold"] == pytest.approx(best, rel=1e-6)
    quantile = baselines.evaluate(splits, "local_contrast", 2.0, 0.99)  # no config: quantile
    assert quantile["threshold"] == pytest.approx(np.quantile(contrast(val), 0.99), rel=1e-5)
    assert got["threshold"] != pytest.approx(quantile["threshold"])  # the rules differ here
    config.eval.threshold_rule = "geomean"  # sqrt(the quantile's x the pastes rule's)
    geo = baselines.evaluate(splits, "local_contrast", 2.0, 0.99, config)
    want = np.sqrt(np.quantile(contrast(val), 0.99) * best)
    assert geo["threshold"] == pytest.approx(want, rel=1e-5)
    config.eval.threshold_rule = "auto"  # local contrast is not z-scored: the pastes rule
    auto = baselines.evaluate(splits, "local_contrast", 2.0, 0.99, config)
    assert auto["threshold"] == pytest.approx(best, rel=1e-6)
