"""Tests of the procedural textures, defects, MVTec tree and natural-like pictures."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cmaae_jax import synthetic, textures

SIZE = 128


@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_texture_is_deterministic_from_the_seed(family):
    a = synthetic.texture(family, SIZE, np.random.default_rng(3))
    b = synthetic.texture(family, SIZE, np.random.default_rng(3))
    c = synthetic.texture(family, SIZE, np.random.default_rng(4))
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert a.std() > 3  # a texture, not a flat colour


def test_samples_of_a_family_are_closer_to_each_other_than_to_other_families():
    # the cast lit by drifting light or in a loose fixture: the cast's colours (tests below)
    families = [f for f in synthetic.FAMILIES if f not in ("cast_lit", "cast_play")]
    means = {
        f: np.stack([synthetic.texture(f, 64, s).reshape(-1, 3).mean(0) for s in range(4)])
        for f in families
    }
    for f in families:
        spread = np.abs(means[f] - means[f].mean(0)).max()
        for g in families:
            if g != f:
                assert np.abs(means[g].mean(0) - means[f].mean(0)).max() > 2 * spread


@pytest.mark.parametrize("family", synthetic.FAMILIES)
@pytest.mark.parametrize("kind", synthetic.DEFECT_KINDS)
def test_defect_mask_is_exactly_the_changed_pixels(family, kind):
    seed = 11
    rng = np.random.default_rng(seed)
    img = synthetic.texture(family, SIZE, rng)
    original = img.copy()
    defective, mask = synthetic.add_defect(img, kind, rng)
    np.testing.assert_array_equal(img, original)  # the input is not modified
    # The clean texture, regenerated independently from the same seed.
    clean = synthetic.texture(family, SIZE, np.random.default_rng(seed))
    diff = np.abs(defective.astype(np.int32) - clean.astype(np.int32)).max(-1)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(diff > 0, mask == 1)  # outside: bit-identical
    assert (diff[mask == 1] > synthetic.MASK_TOLERANCE).all()
    assert diff[mask == 1].mean() > 30  # clearly visible
    assert synthetic.MIN_COVERAGE <= mask.mean() <= synthetic.MAX_COVERAGE


def test_cracks_are_thin_faint_darker_lines_and_their_masks_exact():
    survived = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        img = synthetic.texture("part", SIZE, rng)
        cracked, mask = synthetic.add_defect(img, synthetic.CRACK, rng)
        clean = synthetic.texture("part", SIZE, np.random.default_rng(seed))
        change = cracked.astype(np.int32) - clean.astype(np.int32)
        np.testing.assert_array_equal(np.abs(change).max(-1) > 0, mask == 1)
        assert (change <= 0).all()  # only darker
        depth = -change.min(-1)[mask == 1]
        assert (depth > synthetic.MASK_TOLERANCE).all() and depth.max() <= 60
        assert depth.mean() < 40  # fainter than a scratch (70-100 grey levels at its core)
        assert synthetic.MIN_COVERAGE <= mask.mean() <= synthetic.MAX_COVERAGE
        # One erosion by the 3x3 cross keeps ~1/3 of a 3-px line, all but crossings of a 1-2 px one.
        survived.append(ndimage.binary_erosion(mask).sum() / mask.sum())
    assert max(survived) < 0.3 and np.median(survived) < 0.1


def test_unknown_family_and_kind_are_errors():
    with pytest.raises(ValueError, match="family"):
        synthetic.texture("marble", SIZE, 0)
    with pytest.raises(ValueError, match="defect kind"):
        synthetic.add_defect(synthetic.texture("wood", SIZE, 0), "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="category"):
        synthetic.write_mvtec_tree("/nonexistent", "marble", 1, 1, 0, SIZE)


def _read(path):
    return np.asarray(Image.open(path))


def test_write_mvtec_tree_layout_counts_and_masks(tmp_path):
    root = synthetic.write_mvtec_tree(tmp_path, "tile", 5, 7, seed=2, image_size=SIZE)
    assert root == tmp_path / "tile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tile"]  # no temporary left
    train = sorted((root / "train" / "good").iterdir())
    assert [p.name for p in train] == [f"{i:03d}.png" for i in range(5)]
    assert len(list((root / "test" / "good").glob("*.png"))) == 4
    kinds = sorted(p.name for p in (root / "test").iterdir() if p.name != "good")
    assert kinds == sorted(synthetic.DEFECT_KINDS[:3])  # 3 defective images, kinds in turn
    for i, kind in enumerate(synthetic.DEFECT_KINDS[:3]):
        image = _read(root / "test" / kind / "000.png")
        mask = _read(root / "ground_truth" / kind / "000_mask.png")
        assert image.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask)) == {0, 255}
        clean = synthetic.texture("tile", SIZE, synthetic._sample_rng(2, "tile", "test", i))
        changed = np.any(image != clean, axis=-1)
        np.testing.assert_array_equal(changed, mask == 255)
    good = _read(root / "train" / "good" / "003.png")
    np.testing.assert_array_equal(
        good, synthetic.texture("tile", SIZE, synthetic._sample_rng(2, "tile", "train", 3))
    )


@pytest.mark.parametrize(
    "category, family",
    [
        ("part_crack", "part"),
        ("cast_crack", "cast"),
        ("cast_lit_crack", "cast_lit"),
        ("cast_play_crack", "cast_play"),
    ],
)
def test_crack_categories_are_their_family_with_cracks_only(tmp_path, category, family):
    root = synthetic.write_mvtec_tree(tmp_path, category, 2, 4, seed=1, image_size=SIZE)
    assert sorted(p.name for p in (root / "test").iterdir()) == ["crack", "good"]
    assert len(list((root / "test" / "crack").glob("*.png"))) == 2
    rng = synthetic._sample_rng(1, category, "train", 1)
    np.testing.assert_array_equal(
        _read(root / "train" / "good" / "001.png"), synthetic.texture(family, SIZE, rng)
    )
    other = synthetic.texture(family, SIZE, synthetic._sample_rng(1, family, "train", 1))
    assert not np.array_equal(other, _read(root / "train" / "good" / "001.png"))  # own samples


def test_cast_is_the_part_s_fixture_with_a_surface_that_differs_between_images_and_pores():
    size = 256
    parts = np.stack([synthetic.texture("part", size, s).mean(-1) for s in range(3)])
    casts = np.stack([synthetic.texture("cast", size, s).mean(-1) for s in range(3)])
    for y, x in ((0.5, 0.3), (0.5, 0.7), (0.74, 0.5), (0.1, 0.1)):  # bores, slot, ground
        centre, plate = (int(y * size), int(x * size)), (int(0.3 * size), int(0.5 * size))
        assert (casts[:, centre[0], centre[1]] < casts[:, plate[0], plate[1]] - 25).all()
        assert (parts[:, centre[0], centre[1]] < parts[:, plate[0], plate[1]] - 25).all()
    # On the plate away from every edge, two cast samples differ (grain and pores).
    inside = np.s_[int(0.25 * size) : int(0.38 * size), int(0.2 * size) : int(0.8 * size)]
    assert (casts[0] - casts[1])[inside].std() > 6
    # Pores: small dark pits, many more pixels far below the plate's median than on the part.
    pits = lambda img: (img[inside] < np.median(img[inside]) - 20).sum()
    assert sum(map(pits, casts)) > 5 * max(1, sum(map(pits, parts)))


def test_cast_lit_is_the_cast_times_a_gain_and_a_linear_ramp():
    size = 64
    for seed in range(4):
        cast = textures._cast(np.random.default_rng(seed), size)
        lit = textures._cast_lit(np.random.default_rng(seed), size)
        ratio = (lit / cast)[..., 0]  # the same draws first, then the light: one field
        np.testing.assert_allclose(lit / cast, np.repeat(ratio[..., None], 3, -1), rtol=1e-9)
        # The field is a plane a + b y + c x (least squares by hand), centre gain 0.8-1.2,
        # sides within +-15% of it.
        y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
        design = np.stack([np.ones(size * size), y.ravel(), x.ravel()], 1)
        coef, *_ = np.linalg.lstsq(design, ratio.ravel(), rcond=None)
        np.testing.assert_allclose(design @ coef, ratio.ravel(), atol=1e-9)
        assert 0.8 <= coef[0] <= 1.2
        assert np.hypot(coef[1], coef[2]) / coef[0] <= 2 * 0.15 + 1e-9
    gains = [synthetic.texture("cast_lit", size, s).mean() for s in range(8)]
    assert max(gains) / min(gains) > 1.1  # exposures differ between photographs


def test_cast_play_moves_and_turns_the_fixture_more_than_the_cast():
    size = 128
    plates = {
        name: [textures._fixture(np.random.default_rng(s), size, *args)[2] for s in range(6)]
        for name, args in (("cast", ()), ("play", (0.03, np.deg2rad(2.0))))
    }
    moved = {name: np.mean([np.abs(p[0] - q).mean() for q in p[1:]]) for name, p in plates.items()}
    assert moved["play"] > 2 * moved["cast"]
    areas = [p.sum() for p in plates["play"] + plates["cast"]]
    assert max(areas) < 1.01 * min(areas)  # shifted and turned, not scaled

    # turned: on some sample the plate's top edge is not one row (a shift alone keeps it one)
    def edge_rows(plate):
        return {int(np.argmax(plate[:, c] > 0.5)) for c in range(size // 4, 3 * size // 4)}

    assert max(len(edge_rows(p)) for p in plates["play"]) >= 3
    assert max(len(edge_rows(p)) for p in plates["cast"]) == 1


def test_write_mvtec_tree_is_deterministic_and_not_rewritten(tmp_path, monkeypatch):
    a = synthetic.write_mvtec_tree(tmp_path / "a", "wood", 2, 2, seed=0, image_size=64)
    b = synthetic.write_mvtec_tree(tmp_path / "b", "wood", 2, 2, seed=0, image_size=64)
    c = synthetic.write_mvtec_tree(tmp_path / "c", "wood", 2, 2, seed=1, image_size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)

    def fail(*args, **kwargs):
        raise AssertionError("an existing tree must not be rewritten")

    monkeypatch.setattr(synthetic, "_write_tree", fail)
    assert synthetic.write_mvtec_tree(tmp_path / "a", "wood", 9, 9, seed=5, image_size=64) == a


def test_write_mvtec_tree_is_atomic(tmp_path, monkeypatch):
    calls = []
    save = synthetic._save_png

    def flaky_save(path, array):
        calls.append(path)
        if len(calls) == 6:
            raise OSError("disk full (injected)")
        save(path, array)

    monkeypatch.setattr(synthetic, "_save_png", flaky_save)
    with pytest.raises(OSError, match="injected"):
        synthetic.write_mvtec_tree(tmp_path, "carpet", 4, 4, seed=0, image_size=64)
    assert list(tmp_path.iterdir()) == []  # neither a partial tree nor a temporary folder
    monkeypatch.setattr(synthetic, "_save_png", save)
    root = synthetic.write_mvtec_tree(tmp_path, "carpet", 4, 4, seed=0, image_size=64)
    assert len(list(root.rglob("*.png"))) == 4 + 4 + 2


def test_natural_images_are_deterministic_and_colourful():
    a = synthetic.natural_images(3, 96, seed=1)
    b = synthetic.natural_images(3, 96, seed=1)
    c = synthetic.natural_images(3, 96, seed=2)
    assert a.shape == (3, 96, 96, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert not np.array_equal(a[0], a[1])
    saturation = (a.max(-1).astype(int) - a.min(-1)).mean()
    assert saturation > 30  # colourful, unlike the textures
    assert np.abs(np.diff(a.astype(float), axis=2)).mean() > 3  # some fine detail
