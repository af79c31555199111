"""Defective images that came without a mask count in image metrics only: a missing mask is
not a negative.

The evaluation runs on a folder-layout dataset whose defective images have no masks/ folder,
with a fixed map (the grey level) in place of a model.
"""

import json
import math

import numpy as np
import pytest
from conftest import GreyScorer, tiny_config
from PIL import Image

from cmaae_jax import evaluate, inference, metrics
from cmaae_jax import workdir as workdir_lib

PIXEL_KEYS = (
    "pixel_f1",
    "precision",
    "recall",
    "pixel_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_aupro",
    "num_pixels",
    "num_positive_pixels",
    "num_regions",
)


def _write_dataset(root, with_defective: bool) -> dict:
    """good/ (8), test_good/ (5) and, optionally, defective/ (4, no masks/): 64 x 64 grey
    noise, defective images with a square of a random grey level. Returns each test folder's
    image maxima (grey levels)."""
    rng = np.random.default_rng(0)
    maxima = {}
    for folder, n in (("good", 8), ("test_good", 5), ("defective", 4)):
        if folder == "defective" and not with_defective:
            break
        (root / folder).mkdir(parents=True)
        maxima[folder] = []
        for i in range(n):
            a = rng.integers(0, rng.integers(100, 230), (64, 64)).astype(np.uint8)
            if folder == "defective":
                y, x = rng.integers(0, 48, 2)
                a[y : y + 16, x : x + 16] = rng.integers(100, 256)
            Image.fromarray(a).save(root / folder / f"{i}.png")
            maxima[folder].append(int(a.max()))
    return maxima


def _evaluate(tmp_path, monkeypatch, with_defective: bool):
    name = "with" if with_defective else "without"
    root, workdir = tmp_path / name / "data", tmp_path / name / "work"
    maxima = _write_dataset(root, with_defective)
    config = tiny_config(root, data__format="folder", eval__max_pictures=0)
    workdir.mkdir(parents=True)
    workdir_lib.save_config(workdir, config)
    monkeypatch.setattr(inference, "restore_variables", lambda c, w, step=None: (3, {}))
    monkeypatch.setattr(inference, "Scorer", GreyScorer)
    return evaluate.evaluate(config, workdir), maxima, workdir


def _same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


def _brute_auroc(pos, neg) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_defective_images_without_masks_count_in_image_metrics_only(tmp_path, monkeypatch):
    result, maxima, workdir = _evaluate(tmp_path, monkeypatch, with_defective=True)
    alone, _, _ = _evaluate(tmp_path, monkeypatch, with_defective=False)
    assert result["num_images"] == 9 and result["num_defective"] == 4
    assert result["num_images_without_masks"] == 4 and alone["num_images_without_masks"] == 0
    saved = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert saved["num_images_without_masks"] == 4
    # Pixel metrics: exactly those of the normal test images alone (5 x 64 x 64, no defect).
    assert result["num_pixels"] == 5 * 64 * 64 and result["num_positive_pixels"] == 0
    for key in PIXEL_KEYS:
        assert _same(result[key], alone[key]), (key, result[key], alone[key])
    # Image AUROC: the defective images are positives, by brute force over (defective, normal).
    want = _brute_auroc(maxima["defective"], maxima["test_good"])
    assert 0.0 < want < 1.0
    assert result["image_auroc"] == pytest.approx(want, abs=1e-12)
    assert result["per_type"]["defective"]["image_auroc"] == pytest.approx(want, abs=1e-12)
    assert result["per_type"]["defective"]["num_positive_pixels"] == 0


def test_image_labels_come_from_the_split_not_the_masks():
    rng = np.random.default_rng(1)
    maps = rng.random((5, 8, 8)).astype(np.float32)
    masks = np.zeros((5, 8, 8), np.uint8)
    masks[2, 1:3, 1:3] = 1  # the only mask with a defect pixel
    labels = np.array([1, 0, 1, 0, 1])  # images 0 and 4: defective, all-zero masks
    has_mask = np.array([False, True, True, True, True])  # image 0: no mask at all
    acc = metrics.PixelAccumulator()
    acc.update(maps, masks, labels, has_mask)
    r = acc.result()
    scores = maps.reshape(5, -1).max(axis=1)
    want = _brute_auroc(scores[[0, 2, 4]], scores[[1, 3]])
    assert r["image_auroc"] == pytest.approx(want, abs=1e-12)
    assert r["num_images"] == 5 and r["num_pixels"] == 4 * 64 and r["num_positive_pixels"] == 4
