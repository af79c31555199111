"""Tests of the TFDS builders: prepared without TensorFlow, read back equal to the plain readers."""

import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from cmaae_jax import datasets, layouts, tfds_builders

S = 64
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _noise(hw, seed):
    return np.random.default_rng(seed).integers(0, 256, hw, dtype=np.uint8)


def _mvtec(base):
    """A tiny MVTec tree: 6 good training images, 1 good and 2 scratched test images."""
    for i in range(6):
        _png(f"{base}/train/good/{i:03d}.png", _noise((70, 90), i))
    _png(f"{base}/test/good/000.png", _noise((70, 90), 10))
    for i in range(2):
        _png(f"{base}/test/scratch/{i:03d}.png", _noise((70, 90, 3), 20 + i))
        mask = np.zeros((70, 90), np.uint8)
        mask[10 * i : 10 * i + 30, 20:50] = 255
        _png(f"{base}/ground_truth/scratch/{i:03d}_mask.png", mask)


def _dagm(root):
    for part in ("Train", "Test"):
        for i in range(1, 5):
            _png(f"{root}/Class3/{part}/{i:04d}.PNG", _noise((64, 64), i))
        mask = np.zeros((64, 64), np.uint8)
        mask[5:15, 5:15] = 255
        _png(f"{root}/Class3/{part}/Label/0002_label.PNG", mask)


def _assert_same(got, want):
    assert set(got) == set(want) == {"train", "val", "test"}
    for name in want:
        a, b = got[name], want[name]
        assert a.num_images == b.num_images, name
        assert a.paths == b.paths and a.defect_types == b.defect_types
        assert a.images.dtype == np.uint8 and a.images.shape == b.images.shape
        assert a.labels.dtype == np.int32 and a.masks.dtype == np.uint8
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_tensorflow_not_installed():
    assert importlib.util.find_spec("tensorflow") is None


def test_mvtec_builder_matches_plain_reader(tmp_path):
    _mvtec(tmp_path / "src" / "wood")
    data_dir = str(tmp_path / "tfds")
    got = tfds_builders.load_tfds("mvtec", tmp_path / "src", "wood", S, 0.34, 1, data_dir)
    want = datasets.load_mvtec(tmp_path / "src", "wood", S, 0.34, 1)
    _assert_same(got, want)
    assert got["val"].num_images == 2 and got["test"].labels.tolist() == [0, 1, 1]
    assert "tensorflow" not in sys.modules
    builder = tfds_builders.make_builder("mvtec", tmp_path / "src", "wood", S, data_dir)
    assert builder.is_prepared()
    assert builder.info.features["image"].shape == (S, S, 3)
    assert builder.info.features["mask"].shape == (S, S)
    assert builder.info.splits["train"].num_examples == 6
    # Prepared once: later loads read the stored arrays, not the source folder.
    os.rename(tmp_path / "src", tmp_path / "moved")
    again = tfds_builders.load_tfds("mvtec", tmp_path / "src", "wood", S, 0.34, 1, data_dir)
    _assert_same(again, want)


def test_mvtec_category_folder_as_root(tmp_path):
    _mvtec(tmp_path / "flat")
    data_dir = str(tmp_path / "tfds")
    got = tfds_builders.load_tfds("mvtec", tmp_path / "flat", "", S, 0.0, 0, data_dir)
    _assert_same(got, datasets.load_mvtec(tmp_path / "flat", "", S, 0.0, 0))


def test_dagm_builder_matches_plain_reader(tmp_path):
    _dagm(tmp_path / "dagm")
    data_dir = str(tmp_path / "tfds")
    got = tfds_builders.load_tfds("dagm", tmp_path / "dagm", 3, S, 0.3, 0, data_dir)
    _assert_same(got, datasets.load_dagm(tmp_path / "dagm", "Class3", S, 0.3, 0))
    assert got["test"].labels.tolist() == [0, 1, 0, 0]
    assert got["test"].masks[1, 5:15, 5:15].min() == 1 and got["test"].masks[1].sum() == 100


def test_load_splits_use_tfds(tmp_path):
    spec = importlib.util.spec_from_file_location("default_config", _DEFAULT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _mvtec(tmp_path / "src" / "wood")
    config = module.get_config()
    config.data.update(format="mvtec", root=str(tmp_path / "src"), category="wood", image_size=S)
    config.data.resize = "square"  # the TFDS builders store square images only
    config.data.use_tfds = True
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    got = datasets.load_splits(config)
    assert os.path.isdir(tmp_path / "tfds" / "mvtec_ad")
    config.data.use_tfds = False
    _assert_same(got, datasets.load_splits(config))


def test_builder_configs():
    assert tfds_builders.MvtecAd.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
    assert tfds_builders.Dagm2007.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
    assert "wood" in tfds_builders.MvtecAd.builder_configs
    assert "class7" in tfds_builders.Dagm2007.builder_configs
    assert tfds_builders.builder_config("mvtec", "/x", "wood", 512) == "wood"
    assert tfds_builders.builder_config("dagm", "/x", "7", 512) == "class7"
    custom = tfds_builders.builder_config("mvtec", "/x", "wood", 128)
    assert (custom.name, custom.category, custom.image_size) == ("wood_128", "wood", 128)
    a = tfds_builders.builder_config("mvtec", "/x", "", 512)
    b = tfds_builders.builder_config("mvtec", "/y", "", 512)
    assert a.name != b.name and a.category == ""


def test_errors(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(layouts.DatasetError, match="dataset root"):
        tfds_builders.load_tfds("mvtec", tmp_path / "none", "wood", S, 0.1, 0, data_dir)
    with pytest.raises(layouts.DatasetError, match="no TFDS builder"):
        tfds_builders.load_tfds("folder", tmp_path, "", S, 0.1, 0, data_dir)
    _mvtec(tmp_path / "src" / "wood")
    (tmp_path / "src/wood/test/good/000.png").write_bytes(b"not a png")
    with pytest.raises(layouts.DatasetError, match="test/good/000.png"):
        tfds_builders.load_tfds("mvtec", tmp_path / "src", "wood", S, 0.1, 0, data_dir)
