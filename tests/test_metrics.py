"""Metrics against independent brute-force references (plain loops, no module helpers)."""

import inspect
import math

import numpy as np
import pytest

from cmaae_jax import calibration, metrics, score_keys

# ---------------------------------------------------------------- brute-force references


def brute_regions(mask):
    """8-connected components of a 2-D mask by flood fill: list of lists of (row, col)."""
    h, w = mask.shape
    seen = np.zeros((h, w), bool)
    regions = []
    for r0 in range(h):
        for c0 in range(w):
            if not mask[r0, c0] or seen[r0, c0]:
                continue
            stack, region = [(r0, c0)], []
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                region.append((r, c))
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            stack.append((rr, cc))
            regions.append(region)
    return regions


def brute_confusion(maps, masks, t):
    tp = fp = fn = 0
    for s, m in zip(maps.ravel().tolist(), masks.ravel().tolist(), strict=True):
        if s >= t and m:
            tp += 1
        elif s >= t:
            fp += 1
        elif m:
            fn += 1
    return tp, fp, fn


def brute_f1(maps, masks, t):
    tp, fp, fn = brute_confusion(maps, masks, t)
    return 2 * tp / (2 * tp + fp + fn)


def brute_f1_max(maps, masks):
    return max(brute_f1(maps, masks, t) for t in set(maps.ravel().tolist()))


def brute_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def brute_ap(maps, masks):
    num_pos = int(masks.sum())
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        tp, fp, _ = brute_confusion(maps, masks, t)
        recall = tp / num_pos
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def brute_aupro(maps, masks, region_lists, limit=0.3):
    """region_lists[i]: regions (lists of (r, c)) of image i."""
    num_neg = int((masks == 0).sum())
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        overlaps = []
        for i, regions in enumerate(region_lists):
            for region in regions:
                hit = sum(1 for r, c in region if maps[i, r, c] >= t)
                overlaps.append(hit / len(region))
        _, fp, _ = brute_confusion(maps, masks, t)
        points.append((fp / num_neg, sum(overlaps) / len(overlaps)))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit:
            break
        if x1 > limit:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def brute_all(maps, masks):
    regions = [brute_regions(m) for m in masks]
    labels = masks.ravel().tolist()
    image_labels = [bool(m.any()) for m in masks]
    image_scores = [float(m.max()) for m in maps]
    both = 0 < sum(image_labels) < len(image_labels)
    return {
        "pixel_f1_max": brute_f1_max(maps, masks),
        "pixel_auroc": brute_auroc(maps.ravel().tolist(), labels),
        "pixel_ap": brute_ap(maps, masks),
        "pixel_aupro": brute_aupro(maps, masks, regions),
        "image_auroc": brute_auroc(image_scores, image_labels) if both else math.nan,
        "num_regions": sum(len(r) for r in regions),
    }


def random_case(seed, n=5, size=16, decimals=2):
    """Scores rounded to `decimals`; defects are random rectangles/blobs in some images."""
    rng = np.random.default_rng(seed)
    maps = np.round(rng.random((n, size, size)), decimals).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if i % 3 == 2:
            continue  # a good image
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 3, size=2)
            h, w = rng.integers(1, 5, size=2)
            masks[i, r : r + h, c : c + w] = 1
        masks[i] &= rng.random((size, size)) > 0.15  # ragged shapes, diagonal contacts
    maps = np.where(masks > 0, np.minimum(1.0, maps + 0.3), maps).astype(np.float32)
    return np.round(maps, decimals).astype(np.float32), masks


KEYS = ["pixel_f1_max", "pixel_auroc", "pixel_ap", "pixel_aupro", "image_auroc"]

# ---------------------------------------------------------------------------- tests


def hand_case():
    maps = np.zeros((2, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), np.uint8)
    maps[0] = [[0.9, 0.8, 0.1, 0.0], [0.7, 0.2, 0.1, 0.0], [0.0, 0.0, 0.6, 0.0], [0, 0, 0, 0]]
    masks[0] = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    maps[1] = 0.1
    maps[1, 0, 0], maps[1, 3, 3] = 0.4, 0.5
    masks[1, 3, 2] = masks[1, 3, 3] = 1
    return maps, masks


def test_f1_by_hand():
    maps, masks = hand_case()
    # t = 0.5: image 0 predicts 0.9, 0.8, 0.7 (defect) and 0.6 (normal); image 1 predicts
    # 0.5 (defect) and misses its 0.1 defect pixel: TP 4, FP 1, FN 1, P = R = 4/5, F1 = 8/10.
    out = metrics.evaluate_maps(maps, masks, threshold=0.5)
    assert out["pixel_f1"] == pytest.approx(0.8, abs=1e-12)
    assert out["precision"] == pytest.approx(0.8, abs=1e-12)
    assert out["recall"] == pytest.approx(0.8, abs=1e-12)
    assert out["num_pixels"] == 32 and out["num_positive_pixels"] == 5
    assert out["num_regions"] == 2 and out["num_images"] == 2 and out["bins_exact"]
    ref = brute_all(maps, masks)
    for key in KEYS[:4]:
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key
    assert math.isnan(out["image_auroc"])  # both images are defective


def test_f1_at_unregistered_threshold_is_exact_with_exact_bins():
    maps, masks = hand_case()
    acc = metrics.PixelAccumulator()
    acc.update(maps, masks)
    for t in [0.05, 0.1, 0.45, 0.5, 0.65, 0.95]:
        assert acc.result(t)["pixel_f1"] == pytest.approx(brute_f1(maps, masks, t), abs=1e-12)


def test_pro_hand_regions():
    maps = np.zeros((2, 6, 6), np.float32)
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 0:2, 0:2] = 1  # region of 4
    masks[0, 3:6, 3:6] = 1  # region of 9
    masks[1, 1, 1] = masks[1, 2, 2] = 1  # diagonal contact: one region of 2 (8-connectivity)
    maps[0, 0:2, 0:2] = 0.8
    maps[0, 3:6, 3:6] = [[0.9, 0.5, 0.2], [0.5, 0.5, 0.2], [0.2, 0.2, 0.2]]
    maps[1, 1, 1], maps[1, 2, 2] = 0.3, 0.6
    maps[0, 2, 5] = maps[1, 5, 0] = 0.4
    maps[1, 0, 0] = 0.2
    regions = [
        [
            [(r, c) for r in range(2) for c in range(2)],
            [(r, c) for r in range(3, 6) for c in range(3, 6)],
        ],
        [[(1, 1), (2, 2)]],
    ]
    out = metrics.evaluate_maps(maps, masks)
    assert out["num_regions"] == 3
    assert out["pixel_aupro"] == pytest.approx(brute_aupro(maps, masks, regions), abs=1e-12)


def test_perfect_and_inverted_detector():
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, 2:5, 2:5] = 1
    masks[1, 0, 0] = 1
    perfect = masks.astype(np.float32) * 0.5 + 0.25
    out = metrics.evaluate_maps(perfect, masks)
    for key in KEYS:
        assert out[key] == pytest.approx(1.0, abs=1e-12), key
    inverted = metrics.evaluate_maps(1.0 - perfect, masks)
    assert inverted["pixel_auroc"] == pytest.approx(0.0, abs=1e-12)
    assert inverted["pixel_aupro"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_brute_force(seed):
    maps, masks = random_case(seed)
    t = 0.62
    out = metrics.evaluate_maps(maps, masks, threshold=t)
    ref = brute_all(maps, masks)
    assert out["bins_exact"]
    assert out["num_regions"] == ref["num_regions"]
    for key in KEYS:
        assert out[key] == pytest.approx(ref[key], abs=1e-10), key
    assert out["pixel_f1"] == pytest.approx(brute_f1(maps, masks, t), abs=1e-12)
    best = metrics.evaluate_maps(maps, masks, threshold=out["pixel_f1_max_threshold"])
    assert best["pixel_f1"] == pytest.approx(out["pixel_f1_max"], abs=1e-12)


def test_auroc_ties_count_half():
    maps = np.array([[[0.5, 0.5, 0.5, 0.2]]], np.float32)
    masks = np.array([[[1, 0, 0, 0]]], np.uint8)
    # pairs (pos 0.5, neg): 0.5 = 0.5 twice (1/2 each), 0.5 > 0.2 once: (0.5 + 0.5 + 1) / 3
    assert metrics.evaluate_maps(maps, masks)["pixel_auroc"] == pytest.approx(2 / 3, abs=1e-12)
    assert metrics.binary_auroc([0.5, 0.5, 0.5, 0.2], [1, 0, 0, 0]) == pytest.approx(2 / 3)


def test_binary_auroc_is_the_share_of_ordered_pairs_with_ties_half():
    rng = np.random.default_rng(11)
    for n in (2, 7, 60):
        scores = np.round(rng.random(n), 1)  # many ties
        labels = rng.random(n) < 0.4
        labels[0], labels[1] = True, False
        pos, neg = scores[labels], scores[~labels]
        pairs = [(p > q) + 0.5 * (p == q) for p in pos for q in neg]
        assert metrics.binary_auroc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_image_auroc():
    rng = np.random.default_rng(3)
    maps = np.round(rng.random((8, 4, 4)), 1).astype(np.float32)
    masks = np.zeros((8, 4, 4), np.uint8)
    masks[[1, 4, 6], 0, 0] = 1
    scores = [float(m.max()) for m in maps]
    labels = [bool(m.any()) for m in masks]
    out = metrics.evaluate_maps(maps, masks)
    assert out["image_auroc"] == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_pr_curve_matches_brute_force():
    maps, masks = random_case(4)
    acc = metrics.PixelAccumulator()
    acc.update(maps, masks)
    precision, recall, thresholds = acc.pr_curve()
    assert len(precision) == len(recall) == len(thresholds) + 1
    assert np.all(np.diff(thresholds) > 0) and precision[-1] == 1.0 and recall[-1] == 0.0
    np.testing.assert_array_equal(thresholds, np.unique(maps).astype(np.float64))
    for p, r, t in zip(precision[:-1], recall[:-1], thresholds, strict=True):
        tp, fp, fn = brute_confusion(maps, masks, t)
        assert p == pytest.approx(tp / (tp + fp)) and r == pytest.approx(tp / (tp + fn))


def test_chunked_updates_equal_one_update():
    maps, masks = random_case(5, n=10)
    whole = metrics.PixelAccumulator(thresholds=[0.5])
    whole.update(maps, masks)
    chunked = metrics.PixelAccumulator(thresholds=[0.5])
    for i in range(10):
        chunked.update(maps[i], masks[i])
    small_groups = metrics.PixelAccumulator(thresholds=[0.5], group_pixels=300)
    small_groups.update(maps, masks)
    a = whole.result(0.5)
    for other in (chunked.result(0.5), small_groups.result(0.5)):
        assert a.keys() == other.keys()
        for key, value in a.items():
            assert value == pytest.approx(other[key], rel=1e-12, nan_ok=True), key


def test_coarsened_bins_stay_bounded_and_close():
    rng = np.random.default_rng(6)
    maps = rng.gamma(2.0, 1.0, size=(6, 32, 32)).astype(np.float32)
    masks = np.zeros(maps.shape, np.uint8)
    masks[:4, 8:20, 10:22] = 1
    maps = np.where(masks > 0, maps * 1.8, maps).astype(np.float32)
    t = 3.3
    acc = metrics.PixelAccumulator(thresholds=[t], max_bins=64, group_pixels=2048)
    acc.update(maps, masks)
    out = acc.result(t)
    assert not out["bins_exact"] and out["num_bins"] <= 64
    assert out["pixel_f1"] == pytest.approx(brute_f1(maps, masks, t), abs=1e-12)  # registered
    exact = metrics.evaluate_maps(maps, masks)
    assert exact["bins_exact"]
    for key in ["pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1_max"]:
        assert out[key] == pytest.approx(exact[key], abs=0.02), key
    # Curve points remain exact at the bins' lower edges.
    precision, recall, thresholds = acc.pr_curve()
    for p, r, edge in zip(precision[:-1], recall[:-1], thresholds, strict=True):
        pred = maps >= edge
        tp = int((pred & (masks > 0)).sum())
        assert p == pytest.approx(tp / pred.sum()) and r == pytest.approx(tp / masks.sum())


def test_image_by_image_updates_coarsen_to_the_least_shift_that_fits():
    """Bins wait and merge at once; the shift that ends is the least keeping every bin of all
    the data within max_bins, as one update of everything gives."""
    rng = np.random.default_rng(8)
    maps = rng.gamma(2.0, 1.0, size=(12, 24, 24)).astype(np.float32)
    masks = np.zeros(maps.shape, np.uint8)
    masks[::2, 5:12, 6:15] = 1
    one = metrics.PixelAccumulator(thresholds=[2.0], max_bins=100)
    one.update(maps, masks)
    by_image = metrics.PixelAccumulator(thresholds=[2.0], max_bins=100)
    for i in range(len(maps)):
        by_image.update(maps[i], masks[i])
    a, b = one.result(2.0), by_image.result(2.0)
    for key, value in a.items():
        assert value == pytest.approx(b[key], rel=1e-12, nan_ok=True), key
    keys = score_keys.score_keys(maps).ravel()  # by hand: distinct keys at each shift
    fits = [len(np.unique(keys >> np.uint32(s))) <= 100 for s in range(32)]
    assert by_image.bins.shift == fits.index(True) > 0 and b["num_bins"] <= 100


def test_score_keys_order_and_round_trip():
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-40, 0.25, 7.0, np.inf], np.float32)
    keys = score_keys.score_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)[[0, 1, 2, 3, 5, 6, 7, 8]]) > 0)
    assert keys[3] == keys[4]  # -0.0 and +0.0 tie
    back = score_keys.key_values(keys, 0)
    np.testing.assert_array_equal(back, values.astype(np.float64))


def test_threshold_from_normal_constant_maps_do_not_degenerate():
    normal = np.full((3, 8, 8), 0.3, np.float32)
    t = calibration.threshold_from_normal(normal, 0.999)
    assert t > 0.3 and not np.any(normal >= t)
    zeros_heavy = np.zeros((4, 32, 32), np.float32)
    zeros_heavy[0, 0, :3] = [0.5, 0.7, 0.9]
    t0 = calibration.threshold_from_normal(zeros_heavy, 0.99)
    assert t0 > 0.0 and np.count_nonzero(zeros_heavy >= t0) == 3


def test_threshold_from_normal_is_numpy_quantile():
    rng = np.random.default_rng(7)
    normal = rng.random((4, 16, 16)).astype(np.float32)
    for q in [0.5, 0.99, 0.999]:
        assert calibration.threshold_from_normal(normal, q) == float(np.quantile(normal, q))
    sub = calibration.threshold_from_normal(normal, 0.9, max_pixels=500, seed=1)
    assert sub == calibration.threshold_from_normal(normal, 0.9, max_pixels=500, seed=1)
    assert sub == pytest.approx(np.quantile(normal, 0.9), abs=0.05)


def test_threshold_from_normal_cannot_see_masks():
    params = inspect.signature(calibration.threshold_from_normal).parameters
    assert list(params) == ["normal_maps", "quantile", "max_pixels", "seed"]
    assert not any("mask" in p or "label" in p for p in params)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        metrics.evaluate_maps(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError):
        metrics.evaluate_maps(np.full((1, 2, 2), np.nan), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError):
        calibration.threshold_from_normal(np.zeros((1, 2, 2)), 1.0)
    out = metrics.evaluate_maps(np.ones((2, 4, 4)), np.zeros((2, 4, 4), np.uint8), threshold=0.5)
    assert math.isnan(out["pixel_auroc"]) and math.isnan(out["pixel_aupro"])
    assert math.isnan(out["image_auroc"]) and out["pixel_f1"] == 0.0  # 0 TP, 32 FP
    none = metrics.evaluate_maps(np.ones((1, 2, 2)), np.zeros((1, 2, 2), np.uint8), threshold=2)
    assert math.isnan(none["pixel_f1"]) and none["precision"] == 0.0  # 0 / 0


def test_per_type_metrics_use_that_type_and_every_normal_image():
    maps, masks = random_case(4, n=7, size=10)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    names = ["a" if i % 2 else "b" for i in range(len(labels))]
    names = [n if y else "good" for n, y in zip(names, labels, strict=True)]
    acc = metrics.PerTypeAccumulator(names, labels, thresholds=(0.5,))
    for lo in (0, 3):  # two streamed batches
        hi = 7 if lo else 3
        acc.update(maps[lo:hi], masks[lo:hi], names[lo:hi], labels[lo:hi])
    out = acc.result(0.5)
    assert sorted(out) == ["a", "b"]
    for name in ("a", "b"):
        keep = [i for i, n in enumerate(names) if n in (name, "good")]
        want = brute_all(maps[keep], masks[keep])
        for key in ("pixel_f1_max", "pixel_auroc", "pixel_aupro", "image_auroc"):
            assert out[name][key] == pytest.approx(want[key], abs=1e-9), (name, key)
        tp, fp, fn = brute_confusion(maps[keep], masks[keep], 0.5)
        assert out[name]["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
        assert out[name]["num_images"] == len(keep)


def test_geomean_is_the_geometric_mean_or_the_midpoint():
    assert calibration.geomean(4.0, 9.0) == pytest.approx(6.0)
    assert calibration.geomean(2.0, 8.0) == pytest.approx(4.0)
    assert calibration.geomean(-1.0, 3.0) == pytest.approx(1.0)  # not positive: the midpoint
    assert calibration.geomean(0.0, 5.0) == pytest.approx(2.5)


def test_paste_threshold_is_the_best_f1_threshold_by_brute_force():
    rng = np.random.default_rng(0)
    normal = [rng.random((6, 5)).astype(np.float32), rng.random((4, 7)).astype(np.float32)]
    pasted = [rng.random((6, 5)).astype(np.float32) for _ in range(3)]
    masks = [rng.random((6, 5)) < 0.3 for _ in range(3)]
    for p, m in zip(pasted, masks, strict=True):
        p[m] += 0.4  # pastes score higher, with overlap
    scores = np.concatenate([a.ravel() for a in normal + pasted])
    labels = np.concatenate([np.zeros(58, bool)] + [m.ravel() for m in masks])  # 30 + 28

    def f1(t):
        tp = np.sum(labels & (scores >= t))
        return 2 * tp / (np.sum(scores >= t) + labels.sum())

    best = max(np.unique(scores), key=lambda t: (f1(t), t))
    got = calibration.paste_threshold(normal, pasted, masks)
    assert got == pytest.approx(best) and f1(got) == pytest.approx(f1(best))
    with pytest.raises(ValueError, match="no pasted pixel"):
        calibration.paste_threshold(normal, pasted, [np.zeros_like(m) for m in masks])

    # with an assumed share P of defect pixels: F1 from the pasted pixels' TPR and the
    # normal pixels' FPR (the normal images' and the unpasted pixels of pasted images)
    for prior in (0.001, 0.05, 0.5):

        def f1_prior(t, p=prior):
            tpr, fpr = np.mean(scores[labels] >= t), np.mean(scores[~labels] >= t)
            return 2 * p * tpr / (p * tpr + p + (1 - p) * fpr)

        want = max(np.unique(scores), key=lambda t: (f1_prior(t), t))
        got = calibration.paste_threshold(normal, pasted, masks, prior)
        assert got == pytest.approx(want), prior
    assert calibration.paste_threshold(normal, pasted, masks, 0.001) >= got  # rarer: higher
    with pytest.raises(ValueError, match="paste_prior"):
        calibration.paste_threshold(normal, pasted, masks, 1.0)


def test_held_out_check_by_brute_force():
    """Pixel AUROC by counting pairs, F1 max over every threshold, image AUROC by hand."""
    rng = np.random.default_rng(1)
    normal = [rng.random((5, 4)).astype(np.float32), rng.random((3, 6)).astype(np.float32)]
    pasted = [rng.random((5, 4)).astype(np.float32) for _ in range(2)]
    masks = [np.zeros((5, 4), bool) for _ in range(2)]
    masks[0][1:3, 1:3] = True  # two regions, 4 and 2 pixels
    masks[1][4, 2:4] = True
    pasted[0][masks[0]] += 0.5
    pasted[1][masks[1]] += 0.3
    scores = np.concatenate([a.ravel() for a in normal + pasted])
    labels = np.concatenate([np.zeros(38, bool)] + [m.ravel() for m in masks])
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()

    def f1(t):
        tp = np.sum(labels & (scores >= t))
        return 2 * tp / (np.sum(scores >= t) + labels.sum())

    got = calibration.held_out_check(normal, pasted, masks)
    assert tuple(got) == calibration.HELD_OUT_KEYS
    assert got["pixel_auroc"] == pytest.approx(pairs / (pos.size * neg.size))
    assert got["pixel_f1_max"] == pytest.approx(max(f1(t) for t in np.unique(scores)))
    # images: 2 clean against 2 pasted by their maxima, ranked by hand
    clean_max = [float(a.max()) for a in normal]
    pasted_max = [float(a.max()) for a in pasted]
    wins = sum((p > c) + 0.5 * (p == c) for p in pasted_max for c in clean_max)
    assert got["image_auroc"] == pytest.approx(wins / 4)
    assert 0.0 <= got["pixel_aupro"] <= 1.0
    # a map that ranks every pasted pixel above every other: all four are 1
    perfect = [m.astype(np.float32) + 2.0 for m in masks]
    assert calibration.held_out_check(normal, perfect, masks) == pytest.approx(
        dict.fromkeys(calibration.HELD_OUT_KEYS, 1.0)
    )


def test_unique_inverse_of_sorted_runs_equals_numpy_unique():
    rng = np.random.default_rng(9)
    runs = [np.unique(rng.integers(0, 50, n).astype(np.uint32)) for n in (0, 1, 7, 40, 3)]
    cases = [
        np.concatenate(runs),  # what a merge gets: the kept bins, then each group's
        rng.integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32),  # no runs at all
        np.zeros(0, np.uint32),
    ]
    for keys in cases:
        unique, inverse = score_keys.unique_inverse(keys)
        want_unique, want_inverse = np.unique(keys, return_inverse=True)
        np.testing.assert_array_equal(unique, want_unique)
        np.testing.assert_array_equal(inverse, want_inverse.ravel())
        shifted = want_unique >> np.uint32(3)  # coarsening: sorted, with new duplicates
        unique, inverse = score_keys.unique_inverse(shifted, presorted=True)
        want_unique, want_inverse = np.unique(shifted, return_inverse=True)
        np.testing.assert_array_equal(unique, want_unique)
        np.testing.assert_array_equal(inverse, want_inverse.ravel())


def test_score_bins_hold_each_distinct_score_with_its_counts_by_hand():
    """Groups added one by one: each distinct score one bin, its negative and positive pixel
    counts and the positives' summed weight, as a loop over the pixels gives."""
    rng = np.random.default_rng(3)
    bins = score_keys.ScoreBins(max_bins=64)
    want = {}  # score -> [neg, pos, weight]
    for _ in range(4):
        scores = rng.choice(np.float32([-1.5, 0.0, 0.25, 2.0, 7.0]), size=30)
        positive = rng.random(30) < 0.4
        weights = rng.random(30)
        bins.add(scores, positive, weights)
        for s, p, w in zip(scores, positive, weights, strict=True):
            row = want.setdefault(float(s), [0, 0, 0.0])
            row[1 if p else 0] += 1
            row[2] += w if p else 0.0
    bins.flush()
    assert bins.shift == 0
    np.testing.assert_array_equal(bins.lower_edges(), sorted(want))
    for i, s in enumerate(sorted(want)):
        assert (bins.neg[i], bins.pos[i]) == tuple(want[s][:2])
        assert bins.pro[i] == pytest.approx(want[s][2])
    with pytest.raises(ValueError, match="max_bins"):
        score_keys.ScoreBins(max_bins=8)
