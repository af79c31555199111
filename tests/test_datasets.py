"""Tests of cmaae_jax.datasets on generated MVTec, DAGM and folder trees, and on magnetic tile."""

import ast
import collections
import importlib.util
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from cmaae_jax import datasets, errors, images, layouts

S = 64
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def default_config():
    """configs/default.py's get_config(), imported by path (configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("default_config", _DEFAULT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _png(path, value, hw=(80, 96)):
    """Writes a constant grayscale PNG (value identifies the image after resizing)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(hw, value, np.uint8)).save(path)
    return str(path)


def _mask(path, hw=(80, 96), rows=(0, 40)):
    """Writes a 0/255 mask whose rows[0]:rows[1] are defective."""
    m = np.zeros(hw, np.uint8)
    m[rows[0] : rows[1]] = 255
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(m).save(path)
    return str(path)


def _mvtec(base, num_train=5):
    """<base>/{train/good/00i.png, test/good/t0.png, test/crack/c{0,1}.png, ground_truth/...}."""
    for i in range(num_train):
        _png(f"{base}/train/good/{i:03d}.png", 10 + i)
    _png(f"{base}/test/good/t0.png", 100)
    for i in range(2):
        _png(f"{base}/test/crack/c{i}.png", 150 + i)
        _mask(f"{base}/ground_truth/crack/c{i}_mask.png")
    return base


def _expected_crack_mask():
    rows = np.floor((np.arange(S) + 0.5) * 80 / S).astype(int)
    return np.repeat((rows < 40)[:, None], S, axis=1).astype(np.uint8)


def test_mvtec_layout(tmp_path):
    _mvtec(tmp_path / "wood")
    splits = datasets.load_mvtec(tmp_path, "wood", S, 0.2, seed=0)
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert (train.num_images, val.num_images, test.num_images) == (4, 1, 3)
    assert sorted(train.paths + val.paths) == [
        str(tmp_path / f"wood/train/good/{i:03d}.png") for i in range(5)
    ]
    assert train.paths == sorted(train.paths)
    for split in (train, val):
        assert split.images.shape == (split.num_images, S, S, 3)
        assert split.images.dtype == np.uint8 and split.masks.max() == 0
        assert (split.labels == 0).all() and set(split.defect_types) == {"good"}
        for image, path in zip(split.images, split.paths, strict=True):
            assert (image == 10 + int(os.path.basename(path)[:3])).all()
    assert test.defect_types == ["crack", "crack", "good"]
    assert test.labels.dtype == np.int32 and test.labels.tolist() == [1, 1, 0]
    assert [int(v) for v in test.images[:, 0, 0, 0]] == [150, 151, 100]
    np.testing.assert_array_equal(test.masks[0], _expected_crack_mask())
    np.testing.assert_array_equal(test.masks[1], _expected_crack_mask())
    assert test.masks[2].max() == 0 and test.has_masks


def test_val_split_seeded(tmp_path):
    _mvtec(tmp_path / "c", num_train=10)
    val_paths = lambda seed: tuple(datasets.load_mvtec(tmp_path, "c", S, 0.3, seed)["val"].paths)
    vals = [val_paths(seed) for seed in range(5)]
    assert all(len(v) == 3 for v in vals)
    assert vals[0] == val_paths(0)
    assert len(set(vals)) > 1
    none = datasets.load_mvtec(tmp_path, "c", S, 0.0, seed=0)
    assert none["val"].num_images == 0 and none["val"].images.shape == (0, S, S, 3)
    assert datasets.load_mvtec(tmp_path, "c", S, 0.01, seed=0)["val"].num_images == 1
    with pytest.raises(layouts.DatasetError, match="val_fraction"):
        datasets.load_mvtec(tmp_path, "c", S, 1.0, seed=0)


def test_split_train_val_small():
    assert layouts.split_train_val([1], 0.5, 0) == ([1], [])
    assert layouts.split_train_val([], 0.5, 0) == ([], [])
    train, val = layouts.split_train_val([1, 2], 0.9, 0)
    assert len(train) == 1 and len(val) == 1


def test_errors_are_user_errors_and_value_errors():
    for error in (layouts.DatasetError, images.ImageError):
        assert issubclass(error, errors.UserError) and issubclass(error, ValueError)
    assert datasets.DatasetError is layouts.DatasetError  # evaluate and launch catch it there


def test_layouts_depend_on_neither_reader():
    """images <- layouts <- {datasets, tfds_builders}: no import cycle between the two readers."""
    package = pathlib.Path(layouts.__file__).parent

    def imported(name):
        names = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert not imported("layouts") & {"cmaae_jax.datasets", "cmaae_jax.tfds_builders"}
    assert "cmaae_jax.datasets" not in imported("tfds_builders")
    assert "cmaae_jax.layouts" in imported("tfds_builders")


def test_mvtec_category_empty_reads_root(tmp_path):
    _mvtec(tmp_path)
    assert datasets.load_mvtec(tmp_path, "", S, 0.2, 0)["test"].num_images == 3


def test_mvtec_skips_non_images_and_hidden(tmp_path):
    _mvtec(tmp_path / "c")
    (tmp_path / "c/train/good/readme.md").write_text("hi")
    (tmp_path / "c/train/good/.DS_Store").write_bytes(b"\0")
    _png(tmp_path / "c/test/crack/.hidden.png", 1)
    with pytest.warns(UserWarning, match="readme.md"):
        splits = datasets.load_mvtec(tmp_path, "c", S, 0.2, 0)
    assert splits["train"].num_images + splits["val"].num_images == 5
    assert splits["test"].num_images == 3


def test_mvtec_extensions_case_insensitive(tmp_path):
    base = tmp_path / "c"
    _png(base / "train/good/a.PNG", 1)
    Image.fromarray(np.full((64, 64), 2, np.uint8)).save(base / "train/good/b.Bmp")
    _png(base / "test/crack/x.png", 3)
    _mask(base / "ground_truth/crack/x_mask.PNG")
    splits = datasets.load_mvtec(tmp_path, "c", S, 0.0, 0)
    assert [os.path.basename(p) for p in splits["train"].paths] == ["a.PNG", "b.Bmp"]


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda b: None, "dataset root .*nothere"),
        (lambda b: None, "category folder .*missing.*available|categories under"),
        (lambda b: os.rename(b / "train", b / "training"), "training folder .*train/good"),
        (lambda b: [os.remove(p) for p in (b / "train/good").iterdir()], "holds no images"),
        (lambda b: os.remove(b / "test/crack/c1.png"), "mask .*c1_mask.png has no image"),
        (lambda b: os.remove(b / "ground_truth/crack/c0_mask.png"), "c0.png has no mask"),
        (lambda b: _mask(b / "ground_truth/crack/c0_mask.png", (81, 96)), "96x81.*96x80"),
        (lambda b: _mask(b / "ground_truth/scratch/s_mask.png"), "s_mask.png has no image"),
        (lambda b: (b / "test/crack/c0.png").write_bytes(b"junk"), "c0.png"),
        (lambda b: _png(b / "train/good/tiny.png", 1, (32, 32)), "tiny.png.*smaller"),
    ],
)
def test_mvtec_errors(tmp_path, breakage, match):
    base = _mvtec(tmp_path / "wood")
    breakage(base)
    root, category = tmp_path, "wood"
    if "nothere" in match:
        root = tmp_path / "nothere"
    if "missing" in match:
        category = "missing"
    with pytest.raises(layouts.DatasetError, match=match):
        datasets.load_mvtec(root, category, S, 0.2, 0)


def _dagm(root, name="Class7"):
    for part, labelled in (("Train", {"0003"}), ("Test", {"0002"})):
        for i in range(1, 5 if part == "Train" else 4):
            stem = f"{i:04d}"
            _png(f"{root}/{name}/{part}/{stem}.PNG", i, (64, 64))
            if stem in labelled:
                _mask(f"{root}/{name}/{part}/Label/{stem}_label.PNG", (64, 64), (10, 20))
        with open(f"{root}/{name}/{part}/Label/Labels.txt", "w") as f:
            f.write("header\n")
    return root


@pytest.mark.parametrize("category", ["Class7", "7", 7, "class7"])
def test_dagm_layout(tmp_path, category):
    _dagm(tmp_path)
    splits = datasets.load_dagm(tmp_path, category, S, 0.0, 0)
    train, test = splits["train"], splits["test"]
    assert [os.path.basename(p) for p in train.paths] == ["0001.PNG", "0002.PNG", "0004.PNG"]
    assert [os.path.basename(p) for p in test.paths] == ["0001.PNG", "0002.PNG", "0003.PNG"]
    assert test.labels.tolist() == [0, 1, 0]
    assert test.defect_types == ["good", "defective", "good"]
    expected = np.zeros((S, S), np.uint8)
    expected[10:20] = 1
    np.testing.assert_array_equal(test.masks[1], expected)
    assert test.masks[0].max() == 0 and test.masks[2].max() == 0


def test_dagm_errors(tmp_path):
    _dagm(tmp_path)
    with pytest.raises(layouts.DatasetError, match="not a DAGM class"):
        datasets.load_dagm(tmp_path, "wood", S, 0.0, 0)
    with pytest.raises(layouts.DatasetError, match="Class8"):
        datasets.load_dagm(tmp_path, 8, S, 0.0, 0)
    os.remove(tmp_path / "Class7/Test/0002.PNG")
    with pytest.raises(layouts.DatasetError, match="0002_label.PNG has no image"):
        datasets.load_dagm(tmp_path, 7, S, 0.0, 0)


def test_folder_layout(tmp_path):
    for i in range(4):
        _png(tmp_path / f"good/g{i}.png", i)
    _png(tmp_path / "defective/d0.png", 200)
    _png(tmp_path / "defective/d1.png", 201)
    splits = datasets.load_folder(tmp_path, S, 0.25, 0)
    assert splits["train"].num_images == 3 and splits["val"].num_images == 1
    test = splits["test"]
    assert not test.has_masks and test.masks.max() == 0 and test.labels.tolist() == [1, 1]
    _mask(tmp_path / "masks/d0_mask.png")
    _mask(tmp_path / "masks/d1.png")
    _png(tmp_path / "test_good/tg.png", 50)
    test = datasets.load_folder(tmp_path, S, 0.25, 0)["test"]
    assert test.has_masks and test.labels.tolist() == [0, 1, 1]
    assert [int(v) for v in test.images[:, 0, 0, 0]] == [50, 200, 201]
    np.testing.assert_array_equal(test.masks[1], _expected_crack_mask())
    np.testing.assert_array_equal(test.masks[2], _expected_crack_mask())
    os.remove(tmp_path / "masks/d1.png")
    with pytest.raises(layouts.DatasetError, match="d1.png has no mask"):
        datasets.load_folder(tmp_path, S, 0.25, 0)


def test_folder_errors(tmp_path):
    with pytest.raises(layouts.DatasetError, match="good-image folder"):
        datasets.load_folder(tmp_path, S, 0.1, 0)
    (tmp_path / "good").mkdir()
    with pytest.raises(layouts.DatasetError, match="holds no images"):
        datasets.load_folder(tmp_path, S, 0.1, 0)


def _config(**data):
    config = default_config()
    config.data.image_size = S
    config.eval.val_fraction = 0.2
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


def test_load_splits_dispatch(tmp_path):
    _mvtec(tmp_path / "wood")
    splits = datasets.load_splits(_config(format="mvtec", root=str(tmp_path), category="wood"))
    assert set(splits) == {"train", "val", "test"} and splits["test"].num_images == 3
    _dagm(tmp_path / "dagm")
    config = _config(format="dagm", root=str(tmp_path / "dagm"), category="Class7")
    assert datasets.load_splits(config)["test"].num_images == 3
    with pytest.raises(layouts.DatasetError, match="data.format"):
        datasets.load_splits(_config(format="kolektor", root=str(tmp_path)))
    with pytest.raises(layouts.DatasetError, match="data.root"):
        datasets.load_splits(_config(format="mvtec", root=""))
    with pytest.raises(layouts.DatasetError, match="use_tfds"):
        datasets.load_splits(_config(format="folder", root=str(tmp_path), use_tfds=True))


def test_load_splits_synthetic(tmp_path, monkeypatch):
    synthetic = pytest.importorskip("cmaae_jax.synthetic")
    category = synthetic.FAMILIES[0]
    config = _config(format="synthetic", root=str(tmp_path), category=category)
    config.data.synthetic_num_train, config.data.synthetic_num_test = 5, 4
    splits = datasets.load_splits(config)
    assert splits["train"].num_images + splits["val"].num_images == 5
    assert splits["test"].num_images == 4 and splits["test"].labels.sum() == 2
    monkeypatch.setattr(synthetic, "write_mvtec_tree", lambda *a, **k: pytest.fail("rewritten"))
    assert datasets.load_splits(config)["test"].num_images == 4


# Real data: magnetic tile, 666 good training images and 678 test images.
MAGNETIC_TEST = {"good": 286, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
MT_SIZE = 128


@pytest.fixture(scope="module")
def magnetic(magnetic_tile_root):
    return datasets.load_mvtec(magnetic_tile_root, "", MT_SIZE, 0.1, seed=0)


def test_magnetic_tile_counts(magnetic):
    train, val, test = magnetic["train"], magnetic["val"], magnetic["test"]
    assert train.num_images + val.num_images == 666
    assert val.num_images == 67 and not set(train.paths) & set(val.paths)
    assert collections.Counter(test.defect_types) == MAGNETIC_TEST
    assert (test.labels == np.array([t != "good" for t in test.defect_types])).all()
    for split in (train, val, test):
        assert split.images.shape == (split.num_images, MT_SIZE, MT_SIZE, 3)
        assert split.images.dtype == np.uint8 and split.masks.dtype == np.uint8
        assert set(np.unique(split.masks)) <= {0, 1}
        assert split.images.max() > 150 and split.images.min() < 20
        floats = images.to_float(split.images[:4])
        assert floats.min() >= -1.0 and floats.max() <= 1.0
    assert train.masks.max() == 0 and val.masks.max() == 0
    assert test.masks[test.labels == 0].max() == 0
    assert (test.masks[test.labels == 1].sum(axis=(1, 2)) > 0).sum() >= 392 - 4 - 10


def test_magnetic_tile_masks_match_images(magnetic_tile_root):
    count = 0
    for defect in MAGNETIC_TEST:
        if defect == "good":
            continue
        folder = magnetic_tile_root / "test" / defect
        for path in sorted(folder.iterdir()):
            mask = magnetic_tile_root / "ground_truth" / defect / f"{path.stem}_mask.png"
            with Image.open(path) as a, Image.open(mask) as b:
                assert a.size == b.size, (path, mask)
            count += 1
    assert count == 392


def test_magnetic_tile_masks_aligned(magnetic, magnetic_tile_root):
    test = magnetic["test"]
    checked = set()
    for i, (path, defect) in enumerate(zip(test.paths, test.defect_types, strict=True)):
        if defect == "good" or defect in checked:
            continue
        checked.add(defect)
        stem = os.path.splitext(os.path.basename(path))[0]
        raw = np.asarray(
            Image.open(magnetic_tile_root / "ground_truth" / defect / f"{stem}_mask.png")
        )
        h, w = raw.shape
        rows = np.floor((np.arange(MT_SIZE) + 0.5) * h / MT_SIZE).astype(int)
        cols = np.floor((np.arange(MT_SIZE) + 0.5) * w / MT_SIZE).astype(int)
        np.testing.assert_array_equal(test.masks[i], (raw[rows][:, cols] > 127).astype(np.uint8))
        gray = Image.open(path).resize((MT_SIZE, MT_SIZE), Image.BILINEAR)
        np.testing.assert_array_equal(test.images[i, :, :, 1], np.asarray(gray))
    assert len(checked) == 5


# data.resize=keep_aspect: Splits of differently shaped images, their valid sizes and helpers.


def _noise_png(path, hw, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


def test_read_entries_keep_aspect_two_sizes(tmp_path):
    a = _noise_png(tmp_path / "a.png", (80, 96), 0)  # 96 -> 128, 80 * 128 / 96 = 106.7 -> 107
    b = _noise_png(tmp_path / "b.png", (96, 200), 1)  # 200 -> 128, 96 * 128 / 200 = 61.4 -> 61
    _mask(tmp_path / "b_mask.png", hw=(96, 200), rows=(90, 96))  # bottom rows: near the padding
    entries = [
        layouts.Entry(str(tmp_path / "a.png"), None, 0, "good"),
        layouts.Entry(str(tmp_path / "b.png"), str(tmp_path / "b_mask.png"), 1, "crack"),
    ]
    split = layouts.read_entries(entries, 128, resize="keep_aspect")
    assert not split.stacked and split.sizes.tolist() == [[107, 128], [61, 128]]
    assert [im.shape for im in split.images] == [(128, 128, 3), (64, 128, 3)]
    assert [m.shape for m in split.masks] == [(128, 128), (64, 128)]
    for i, (src, padded_h) in enumerate(((a, 128), (b, 64))):
        h, w = split.sizes[i]
        want = np.asarray(Image.fromarray(src).resize((w, h), Image.BILINEAR))
        np.testing.assert_array_equal(split.valid_map(i, split.images[i]), want)
        np.testing.assert_array_equal(
            split.images[i],
            np.pad(want, ((0, padded_h - h), (0, 0), (0, 0)), mode="reflect"),
        )
    rows = np.floor((np.arange(61) + 0.5) * 96 / 61).astype(int)
    want_mask = np.repeat((rows >= 90)[:, None], 128, axis=1).astype(np.uint8)
    np.testing.assert_array_equal(split.masks[1][:61], want_mask)
    assert split.masks[1][61:].max() == 0 and split.masks[0].max() == 0
    # select keeps everything aligned; valid_groups crops maps and masks per valid size
    picked = split.select([1, 0])
    assert picked.paths == [entries[1].path, entries[0].path]
    assert picked.sizes.tolist() == [[61, 128], [107, 128]] and picked.labels.tolist() == [1, 0]
    assert picked.images[0] is split.images[1]
    maps = [np.ones((64, 128)), np.ones((128, 128))]
    groups = list(picked.valid_groups([0, 1], maps))
    assert [(g[0].tolist(), g[1].shape, g[2].shape) for g in groups] == [
        ([0], (1, 61, 128), (1, 61, 128)),
        ([1], (1, 107, 128), (1, 107, 128)),
    ]


def test_square_split_is_unchanged_and_fully_valid(tmp_path):
    _mvtec(tmp_path / "wood")
    test = datasets.load_mvtec(tmp_path, "wood", S, 0.2, seed=0)["test"]
    assert test.stacked and test.sizes.tolist() == [[S, S]] * 3
    maps = np.random.default_rng(0).random((3, S, S)).astype(np.float32)
    ((pos, got_maps, got_masks),) = test.valid_groups([0, 1, 2], maps)
    assert pos.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got_maps, maps)
    np.testing.assert_array_equal(got_masks, test.masks)


def test_load_splits_passes_data_resize(tmp_path):
    _mvtec(tmp_path / "wood")  # 80 x 96 images: keep_aspect at 64 gives 53 x 64 in 64 x 64
    config = _config(format="mvtec", root=str(tmp_path), category="wood", resize="keep_aspect")
    test = datasets.load_splits(config)["test"]
    assert not test.stacked and test.sizes.tolist() == [[53, 64]] * 3
    assert all(m.shape == (64, 64) and m[53:].max() == 0 for m in test.masks)
    with pytest.raises(layouts.DatasetError, match="data.resize='keep_aspect'.*use_tfds"):
        config.data.use_tfds = True
        datasets.load_splits(config)
    old = _config(format="mvtec", root=str(tmp_path), category="wood")
    del old.data["resize"]  # a config.json written before data.resize: square
    assert datasets.load_splits(old)["test"].images.shape == (3, S, S, 3)


@pytest.mark.parametrize("resize", ["square", "keep_aspect"])
def test_load_train_decodes_only_the_train_split(tmp_path, resize):
    _mvtec(tmp_path / "wood", num_train=6)
    config = _config(format="mvtec", root=str(tmp_path), category="wood", resize=resize)
    whole = datasets.load_splits(config)["train"]
    train = datasets.load_train(config)
    assert train.paths == whole.paths and len(train.paths) == 5  # 6 minus one held out
    np.testing.assert_array_equal(np.stack(train.images), np.stack(whole.images))
    np.testing.assert_array_equal(train.sizes, whole.sizes)
    # A corrupt test image and a corrupt held-out image stop load_splits, not load_train.
    (tmp_path / "wood/test/crack/c0.png").write_bytes(b"not a png")
    held_out = set(map(str, (tmp_path / "wood/train/good").iterdir())) - set(train.paths)
    (held_out_path,) = held_out
    with open(held_out_path, "wb") as f:
        f.write(b"not a png either")
    with pytest.raises(layouts.DatasetError):
        datasets.load_splits(config)
    np.testing.assert_array_equal(
        np.stack(datasets.load_train(config).images), np.stack(whole.images)
    )


def test_eval_files_are_checked_before_training(tmp_path):
    """A held-out or test file that evaluation could not read, or a mask of another size,
    stops training before any step or checkpoint, naming the file; the good tree passes."""
    from conftest import tiny_config

    from cmaae_jax import train

    base = _mvtec(tmp_path / "wood", num_train=6)
    config = tiny_config(tmp_path / "unused")
    config.data.format, config.data.root, config.data.category = "mvtec", str(tmp_path), "wood"
    config.eval.val_fraction = 0.2
    datasets.check_eval_files(config)  # nothing wrong
    _mask(base / "ground_truth/crack/c1_mask.png", (80, 90))
    with pytest.raises(layouts.DatasetError, match=r"c1_mask.png: mask is 90x80.*c1.png is 96x80"):
        train.train(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()
    _mask(base / "ground_truth/crack/c1_mask.png")
    train_paths = set(datasets.load_train(config).paths)
    (held_out,) = set(map(str, (base / "train/good").iterdir())) - train_paths
    pathlib.Path(held_out).write_bytes(b"not a png")
    with pytest.raises(layouts.DatasetError, match=f"{held_out}: not a readable image"):
        datasets.check_eval_files(config)
