"""Tests of the natural-image bank GAAGA pastes from (skimage, procedural, folder, TFDS)."""

import importlib.util
import pathlib
import time
import types
import warnings

import numpy as np
import pytest
from PIL import Image

from cmaae_jax import errors, natural_images, synthetic


def test_procedural_bank():
    a = natural_images.natural_bank("procedural", 64, 3, seed=1)
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, natural_images.natural_bank("procedural", 64, 3, seed=1))


def test_dir_bank_reads_recursively_samples_and_skips_bad_files(tmp_path):
    (tmp_path / "sub").mkdir()
    pictures = synthetic.natural_images(5, 80, seed=3)
    for i, picture in enumerate(pictures):
        folder = tmp_path / "sub" if i % 2 else tmp_path
        Image.fromarray(picture).save(folder / f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="broken.png"):
        everything = natural_images.natural_bank(f"dir:{tmp_path}", 64, 10, seed=0)
    assert everything.shape == (5, 64, 64, 3) and everything.dtype == np.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken file may or may not be among the sampled
        some = natural_images.natural_bank(f"dir:{tmp_path}", 64, 3, seed=0)
        again = natural_images.natural_bank(f"dir:{tmp_path}", 64, 3, seed=0)
    assert some.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(some, again)


def test_bank_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        natural_images.natural_bank(f"dir:{missing}", 64, 4, seed=0)
    with pytest.raises(ValueError, match="no readable image"):
        natural_images.natural_bank(f"dir:{tmp_path}", 64, 4, seed=0)
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable image"):
        natural_images.natural_bank(f"dir:{tmp_path}", 64, 4, seed=0)
    with pytest.raises(ValueError, match="anomaly.natural_source"):
        natural_images.natural_bank("imagenet", 64, 4, seed=0)


def test_tfds_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(natural_images, "_network_available", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="'dtd'.*no network.*dir:PATH"):
        natural_images.natural_bank("tfds:dtd", 64, 4, seed=0, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 20
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        natural_images.natural_bank(
            "tfds:no_such_dataset_xyz", 64, 4, seed=0, data_dir=str(tmp_path)
        )


def test_network_probe_is_bounded():
    start = time.perf_counter()
    assert natural_images._network_available("unreachable.invalid", 443, timeout=1.0) is False
    assert time.perf_counter() - start < 5


def test_tfds_bank_reads_a_prepared_dataset(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyGaagaImages(tfds.core.GeneratorBasedBuilder):
        """Five random images stored as zlib tensors (no TensorFlow needed)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib")
            features = tfds.features.FeaturesDict({"image": image})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            for i in range(5):
                yield i, {"image": rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)}

    monkeypatch.setattr(natural_images, "_network_available", lambda *a, **k: True)
    bank = natural_images.natural_bank(
        "tfds:tiny_gaaga_images", 32, 3, seed=0, data_dir=str(tmp_path)
    )
    assert bank.shape == (3, 32, 32, 3) and bank.dtype == np.uint8
    again = natural_images.natural_bank(
        "tfds:tiny_gaaga_images", 32, 3, seed=0, data_dir=str(tmp_path)
    )
    np.testing.assert_array_equal(bank, again)


def test_bank_errors_are_user_errors(tmp_path):
    with pytest.raises(natural_images.NaturalImagesError) as info:
        natural_images.natural_bank(f"dir:{tmp_path / 'nowhere'}", 64, 4, seed=0)
    assert isinstance(info.value, errors.UserError) and isinstance(info.value, ValueError)


def test_bank_for_config_reads_the_config():
    config = types.SimpleNamespace(
        anomaly=types.SimpleNamespace(natural_source="procedural", bank_size=2),
        data=types.SimpleNamespace(image_size=64),
        train=types.SimpleNamespace(seed=5),
    )
    want = natural_images.natural_bank("procedural", 64, 2, seed=5)
    np.testing.assert_array_equal(natural_images.bank_for_config(config), want)


def test_is_source_accepts_the_forms_natural_bank_reads():
    for source in ("skimage", "procedural", "dir:/some/folder", "tfds:dtd"):
        assert natural_images.is_source(source)
    for source in ("imagenet", "", "dir", "Procedural", "skimage:astronaut"):
        assert not natural_images.is_source(source)
    assert natural_images.SOURCES_HELP == "skimage, procedural, dir:PATH or tfds:NAME"


# The photographs of scikit-image's data folder, chosen by looking at them (written out here,
# not taken from the module under test).
PHOTOS = {
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
}


def _package_photos(size):
    """{file name: photo decoded and resized with PIL}, read from the installed skimage."""
    skimage = pytest.importorskip("skimage")
    folder = pathlib.Path(skimage.__file__).parent / "data"
    out = {}
    for name in sorted(PHOTOS):
        if (folder / name).exists():
            image = Image.open(folder / name).convert("RGB")
            out[name] = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    assert len(out) >= 10, f"expected the scikit-image photographs in {folder}"
    return out


def test_skimage_bank_holds_the_package_photographs():
    photos = _package_photos(48)
    n = len(photos)
    bank = natural_images.natural_bank("skimage", 48, n + 6, seed=3)
    assert bank.shape == (n + 6, 48, 48, 3) and bank.dtype == np.uint8
    # The first n entries are the n photographs, each once, in some order.
    found = [
        [name for name, ref in photos.items() if np.array_equal(ref, image)] for image in bank[:n]
    ]
    assert sorted(sum(found, [])) == sorted(photos)
    # The rest are other views (crops, turns) of them: new and different from one another.
    extra = {image.tobytes() for image in bank[n:]}
    assert len(extra) == 6 and not extra & {image.tobytes() for image in bank[:n]}
    # A smaller bank is a subset of the photographs.
    few = natural_images.natural_bank("skimage", 48, 4, seed=0)
    assert all(any(np.array_equal(ref, image) for ref in photos.values()) for image in few)


def test_skimage_bank_is_deterministic_per_seed():
    a = natural_images.natural_bank("skimage", 32, 20, seed=1)
    np.testing.assert_array_equal(a, natural_images.natural_bank("skimage", 32, 20, seed=1))
    b = natural_images.natural_bank("skimage", 32, 20, seed=2)
    assert a.shape == b.shape == (20, 32, 32, 3) and not np.array_equal(a, b)


def test_skimage_missing_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "skimage" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(natural_images.NaturalImagesError) as info:
        natural_images.natural_bank("skimage", 32, 4, seed=0)
    message = str(info.value)
    assert "\n" not in message and "anomaly.natural_source" in message
    assert "pip install scikit-image" in message
    assert "procedural" in message and "dir:PATH" in message


def test_real_data_configs_use_the_skimage_photographs():
    from configs import carpet, dagm, default, magnetic_tile, wood

    for module in (wood, carpet, dagm, magnetic_tile):
        assert module.get_config().anomaly.natural_source == "skimage"
    assert default.get_config().anomaly.natural_source == "procedural"
