"""data.resize=keep_aspect past loading: the Scorer on mixed shapes, metrics and the threshold
on valid pixels only, baselines, the training Sampler's canvases, predict and export."""

import pathlib

import ml_collections
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from cmaae_jax import (
    baselines,
    evaluate,
    export,
    export_loader,
    gaaga,
    images,
    inference,
    layouts,
    metrics,
    model,
    predict,
    scoring,
    train,
)
from cmaae_jax import sampler as sampler_lib


def _reflect_index(i, n):
    if n == 1 or i < n:
        return 0 if n == 1 else i
    period = 2 * (n - 1)
    return i % period if i % period < n else period - i % period


def _split(images, masks, sizes, labels, kinds=None):
    n = len(images)
    kinds = kinds or ["crack" if label else "good" for label in labels]
    return layouts.Split(
        list(images),
        list(masks),
        np.asarray(labels, np.int32),
        [f"{i}.png" for i in range(n)],
        kinds,
        sizes=np.asarray(sizes, np.int32),
    )


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("unused"), model__latent_dim=16)
    config.score.batch_images = 1  # a chunk of 4 images on the 4 test devices
    variables = model.init(model.from_config(config), np.array([0, 1], np.uint32))
    return inference.Scorer(config, variables)


def test_scorer_maps_mixed_shapes_in_input_order_like_one_by_one(scorer):
    rng = np.random.default_rng(0)
    shapes = [(64, 128), (128, 64), (64, 128), (64, 64), (64, 128), (64, 128), (64, 128)]
    imgs = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    maps = scorer(imgs)
    assert isinstance(maps, list) and [m.shape for m in maps] == shapes
    for image, amap in zip(imgs, maps, strict=True):
        alone = scorer(image[None])
        assert alone.shape == (1, *image.shape[:2])
        np.testing.assert_allclose(amap, alone[0], rtol=1e-5, atol=1e-7)
    seen = [i for idx, _ in scorer.batches(imgs) for i in idx.tolist()]
    assert sorted(seen) == list(range(len(imgs)))  # every image exactly once
    same = scorer([imgs[0], imgs[2]])  # one shape: stacked, as for an array
    assert isinstance(same, np.ndarray) and same.shape == (2, 64, 128)
    np.testing.assert_allclose(same, np.stack([maps[0], maps[2]]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("every_chunk", [False, True])
def test_few_images_are_spread_over_the_devices_with_the_same_maps(scorer, every_chunk):
    # A chunk is 4 images here: off CPU, 6 images of one shape are one padded pmapped chunk
    # and two images scored one by one with their windows split over the 4 devices
    # (Scorer._one_by_one); on CPU all six one by one.
    assert scorer.spread_every_chunk  # the tests' devices are CPU devices
    imgs = np.random.default_rng(1).integers(0, 256, (6, 64, 128, 3), dtype=np.uint8)
    single = scoring.make_map_fn(scorer.net, "msfr", (1,), stride=16)  # the config's options
    want = np.asarray(single(scorer.spread_variables, images.to_float(imgs)))
    scorer.spread_every_chunk = every_chunk
    try:
        got = scorer(imgs)
        assert scorer._one_by_one(imgs[:2]) is not None
        assert (scorer._one_by_one(imgs[:3]) is None) != every_chunk
    finally:
        scorer.spread_every_chunk = True
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.max()))


class _FixedScorer:
    """Returns given maps: a Scorer stand-in for the cropping tests."""

    def __init__(self, maps):
        self.maps = maps

    def __call__(self, images):
        assert len(images) == len(self.maps)
        return self.maps

    def batches(self, images):
        order = [2, 0, 1]  # out of order, as shape groups come
        for i in order:
            yield np.array([i]), self.maps[i][None]


def _padded_case():
    """Three images padded to 64 x 64 whose padding holds huge scores."""
    rng = np.random.default_rng(3)
    sizes = [(40, 64), (64, 30), (40, 64)]
    maps, masks, valid_maps, valid_masks = [], [], [], []
    for h, w in sizes:
        m = np.full((64, 64), 1e6, np.float32)
        m[:h, :w] = rng.random((h, w)).astype(np.float32)
        k = np.zeros((64, 64), np.uint8)
        k[h // 2 : h // 2 + 5, 3:9] = 1
        m[:h, :w][k[:h, :w] == 1] += 0.5
        maps.append(m), masks.append(k)
        valid_maps.append(m[:h, :w].ravel()), valid_masks.append(k[:h, :w].ravel())
    masks[1][:] = 0  # image 1 is good
    valid_masks[1][:] = 0
    images = [np.zeros((64, 64, 3), np.uint8)] * 3
    split = _split(images, masks, sizes, [1, 0, 1])
    return split, maps, np.concatenate(valid_maps), np.concatenate(valid_masks).astype(bool)


def test_metrics_and_threshold_count_only_valid_pixels(tmp_path):
    split, maps, scores, labels = _padded_case()
    fake = _FixedScorer(maps)
    config = ml_collections.ConfigDict(
        {"score": {"reference": "none"}, "eval": {"threshold_quantile": 0.9}}
    )
    threshold, ref, record, *_ = evaluate.calibrate(fake, {"val": split}, config)
    assert ref is None and record == {"setting": "none", "used": False}
    assert threshold == pytest.approx(np.quantile(scores, 0.9), rel=1e-6) and threshold < 2
    acc, per_type = evaluate._score_test(fake, split, (threshold,), None, tmp_path, max_pictures=5)
    r = acc.result(threshold)
    assert r["num_pixels"] == 40 * 64 + 64 * 30 + 40 * 64 == labels.size
    # AUROC by brute force over every (defect, normal) pixel pair; ties count 1/2
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert r["pixel_auroc"] == pytest.approx(wins / (pos.size * neg.size), rel=1e-9)
    tp = np.sum((scores >= threshold) & labels)
    fp = np.sum((scores >= threshold) & ~labels)
    assert r["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + (labels.sum() - tp)))
    assert per_type.result(threshold)["crack"]["num_pixels"] == labels.size
    # overlays are at the valid size: 4 panels of width w (+ 10 px gaps), height h + 16
    for name in ("crack_0.png", "crack_2.png"):
        assert Image.open(tmp_path / name).size == (4 * 64 + 30, 40 + 16)


def test_baselines_ignore_the_padding():
    rng = np.random.default_rng(5)
    valid = [
        (120 + rng.integers(-3, 4, (24, 32, 1))).repeat(3, -1).astype(np.uint8) for _ in range(6)
    ]
    vmasks = [np.zeros((24, 32), np.uint8) for _ in range(6)]
    for i in (4, 5):
        valid[i][8:11, 8:11], vmasks[i][8:11, 8:11] = 30, 1
    garbage = lambda a: np.pad(
        a, ((0, 40), (0, 32)) + ((0, 0),) * (a.ndim - 2), constant_values=255
    )
    padded = {
        "train": _split(
            [garbage(v) for v in valid[:3]],
            [garbage(m) for m in vmasks[:3]],
            [(24, 32)] * 3,
            [0] * 3,
        ),
        "val": _split([garbage(valid[3])], [garbage(vmasks[3])], [(24, 32)], [0]),
        "test": _split(
            [garbage(v) for v in valid[3:]],
            [garbage(m) for m in vmasks[3:]],
            [(24, 32)] * 3,
            [0, 1, 1],
        ),
    }
    stacked = {
        key: layouts.Split(
            np.stack([s.valid_map(i, im) for i, im in enumerate(s.images)]),
            np.stack([s.valid_map(i, m) for i, m in enumerate(s.masks)]),
            s.labels,
            s.paths,
            s.defect_types,
        )
        for key, s in padded.items()
    }
    for method in baselines.METHODS:
        got = baselines.evaluate(padded, method, sigma=2.0, quantile=0.99)
        want = baselines.evaluate(stacked, method, sigma=2.0, quantile=0.99)
        assert got["num_pixels"] == 3 * 24 * 32  # the padding is not pooled
        for key in metrics.HEADLINE_KEYS:
            assert got[key] == pytest.approx(want[key], nan_ok=True), (method, key)


def test_mean_image_of_different_sizes_by_hand():
    train_split = _split(
        [np.full((64, 64, 3), 100, np.uint8), np.full((64, 64, 3), 200, np.uint8)],
        [np.zeros((64, 64), np.uint8)] * 2,
        [(2, 4), (4, 2)],
        [0, 0],
    )
    test_split = _split([np.full((64, 64, 3), 51, np.uint8)], [np.zeros((64, 64))], [(3, 2)], [0])
    (got,) = baselines.split_maps("mean_image", test_split, train_split, 0.0)
    np.testing.assert_allclose(got, np.full((3, 2), (150 - 51) / 255), rtol=1e-6)


def test_sampler_places_keep_aspect_images_in_reflected_canvases():
    rng = np.random.default_rng(7)
    sizes = [(40, 64), (64, 10), (1, 64), (64, 64), (25, 33)]
    imgs = []
    for h, w in sizes:
        im = np.zeros((64, 64, 3), np.uint8)  # padding content must not matter
        im[:h, :w] = rng.integers(0, 256, (h, w, 3))
        imgs.append(im)
    sampler = sampler_lib.Sampler(imgs, 8, seed=3, sizes=sizes, canvas_size=128)
    for step in range(3):
        b, got_sizes = sampler.draw(step)
        assert b.shape == (4, 2, 128, 128, 3) and got_sizes.shape == (4, 2, 2)
        for canvas, (h, w) in zip(b.reshape(8, 128, 128, 3), got_sizes.reshape(8, 2), strict=True):
            i = sizes.index((h, w))
            ys = [_reflect_index(y, h) for y in range(128)]
            xs = [_reflect_index(x, w) for x in range(128)]
            np.testing.assert_array_equal(canvas, imgs[i][ys][:, xs])
        args = sampler.step_args(step, "bank", "key")
        assert len(args) == 4 and args[1:3] == ("bank", "key")
    square = sampler_lib.Sampler(np.stack(imgs), 8, seed=3)
    b, none = square.draw(0)
    idx = np.sort(np.random.default_rng([3, 0]).integers(0, 5, 8))
    assert none is None and len(square.step_args(0, "bank", "key")) == 3
    np.testing.assert_array_equal(b.reshape(8, 64, 64, 3), np.stack(imgs)[idx])


def _png(path, hw, seed, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = (110 + rng.integers(-20, 21, (*hw, 1))).repeat(3, -1).astype(np.uint8)
    if value is not None:  # a dark defect block, and its mask
        a[hw[0] // 2 : hw[0] // 2 + 16, 40:80] = value
        m = np.zeros(hw, np.uint8)
        m[hw[0] // 2 : hw[0] // 2 + 16, 40:80] = 255
        Image.fromarray(m).save(path.parent.parent / "masks" / f"{path.stem}_mask.png")
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def trained_keep_aspect(tmp_path_factory):
    """A 2 + 2 step run on non-square folder data at S=128 (valid 77x128 and 41x128)."""
    root = tmp_path_factory.mktemp("ka")
    (root / "data" / "masks").mkdir(parents=True)
    for i in range(8):
        _png(root / "data" / "good" / f"g{i}.png", (96, 160) if i % 2 else (64, 200), i)
    for i in range(2):
        _png(root / "data" / "test_good" / f"t{i}.png", (96, 160), 20 + i)
        _png(root / "data" / "defective" / f"d{i}.png", (64, 200), 30 + i, value=20)
    config = tiny_config(root / "data", data__format="folder", data__image_size=128)
    config.data.resize = "keep_aspect"
    config.model.latent_dim = 16
    config.train.stage1_steps = config.train.stage2_steps = 2
    config.eval.val_fraction = 0.25
    workdir = root / "work"
    train.train(config, str(workdir))
    return root, workdir, config


def test_train_evaluate_predict_export_keep_aspect(trained_keep_aspect, tmp_path):
    root, workdir, config = trained_keep_aspect
    r = evaluate.evaluate(config, str(workdir))
    assert r["num_images"] == 4 and r["checkpoint_step"] == 4
    # 96x160 -> 77x128 (76.8 rounded), 64x200 -> 41x128 (40.96): the padding never counts
    assert r["num_pixels"] == 2 * 77 * 128 + 2 * 41 * 128
    # mask rows 32..47 of 64 -> rows r with floor((r + 0.5) * 64 / 41) in 32..47: r = 20..30;
    # columns 40..79 of 200 -> floor((c + 0.5) * 200 / 128) in 40..79: c = 26..50
    assert r["num_positive_pixels"] == 2 * 11 * 25
    for name in ("defective_d0.png", "defective_d1.png"):
        pic = Image.open(workdir / "eval" / "pictures" / name)
        assert pic.size == (4 * 128 + 30, 41 + 16)

    files = sorted((root / "data" / "defective").glob("*.png")) + [
        root / "data" / "test_good" / "t0.png"
    ]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in files:
        (inputs / f.name).write_bytes(f.read_bytes())
    summary = predict.predict(workdir, str(inputs), tmp_path / "out", threshold=r["threshold"])
    assert [pathlib.Path(s["path"]).name for s in summary["images"]] == [
        "d0.png",
        "d1.png",
        "t0.png",
    ]
    for f, hw in (("d0", (64, 200)), ("t0", (96, 160))):
        assert np.load(tmp_path / "out" / f"{f}_map.npy").shape == hw  # original size

    _, variables = inference.restore_variables(config, str(workdir))
    scorer = inference.Scorer(config, variables)
    loaded = [images.load_image(f, 128, "keep_aspect") for f in files]
    valid = [(41, 128), (41, 128), (77, 128)]
    want = [m[:h, :w] for m, (h, w) in zip(scorer(loaded), valid, strict=True)]
    path = tmp_path / "m.jaxexport"
    meta = export.save(path, config, variables, r["threshold"], batch=2)
    assert meta["resize"] == "keep_aspect"
    mapper = export_loader.load(path)
    scaled = [im[:h, :w] for im, (h, w) in zip(loaded, valid, strict=True)]
    got = mapper(scaled)
    assert isinstance(got, list) and [g.shape for g in got] == valid
    for g, w_ in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mapper.scores(got), [w_.max() for w_ in want], rtol=1e-4)
    with pytest.raises(export_loader.ExportError, match="long side is 128"):
        mapper(np.zeros((130, 64, 3), np.uint8))


def test_data_resize_is_validated(tmp_path):
    from cmaae_jax import configlib

    config = tiny_config(tmp_path)
    assert config.data.resize == "keep_aspect"  # the default; square is the paper's
    config.data.resize = "stretch"
    with pytest.raises(configlib.ConfigError, match="data.resize"):
        configlib.validate(config)


class _BrightnessScorer:
    """Scores each pixel by its mean channel value: a Scorer stand-in that sees pastes."""

    def batches(self, images):
        for i, im in enumerate(images):
            yield np.array([i]), im.mean(-1, dtype=np.float32)[None]


@pytest.mark.parametrize(
    "quantile, prior, binding",
    [(0.5, 0.0, "pastes"), (0.9999, 0.0, "quantile"), (0.9999, 0.01, "prior")],
)
def test_pastes_rule_pools_clean_negatives_and_pasted_pixels(monkeypatch, quantile, prior, binding):
    rng = np.random.default_rng(5)
    sizes = [(40, 64), (64, 30), (20, 64)]
    imgs = [rng.integers(0, 200, (64, 64, 3), np.uint8) for _ in sizes]
    val = _split(imgs, [np.zeros((64, 64), np.uint8)] * 3, sizes, [0, 0, 0])
    pasted, masks = [], []
    for im, (h, w) in zip(imgs, sizes, strict=True):
        m = np.zeros((h, w), bool)
        m[: h // 2, : w // 3] = True  # bright pastes, one of them also half outside
        p = im.copy()
        p[: h // 2, : w // 3] = rng.integers(120, 256, (h // 2, w // 3, 3))
        pasted.append(p), masks.append(m)
    calls = []

    def fake_paste(images_u8, sizes_nx2, bank, key, anomaly, canvas_size):
        calls.append((np.asarray(sizes_nx2).tolist(), canvas_size, anomaly.paste_shape))
        return pasted, masks

    monkeypatch.setattr(gaaga, "paste_on_host", fake_paste)
    config = tiny_config(
        "unused",
        eval__threshold_rule="pastes",
        eval__threshold_quantile=quantile,
        eval__paste_prior=prior,
    )
    threshold, ref, _, candidates, *_ = evaluate.calibrate(
        _BrightnessScorer(), {"val": val}, config
    )
    assert ref is None and calls == [([list(s) for s in sizes], 64, "rect")]

    # brute force: every valid clean pixel negative, pasted pixels labelled by the masks
    def valid_scores(images_u8):
        return [
            im[:h, :w].mean(-1, dtype=np.float32).ravel()
            for im, (h, w) in zip(images_u8, sizes, strict=True)
        ]

    scores = np.concatenate(valid_scores(imgs) + valid_scores(pasted))
    labels = np.concatenate(
        [np.zeros(sum(h * w for h, w in sizes), bool)] + [m.ravel() for m in masks]
    )

    def f1(t):
        if prior:  # TPR over pasted pixels, FPR over every normal one, defects a share prior
            tpr, fpr = np.mean(scores[labels] >= t), np.mean(scores[~labels] >= t)
            return 2 * prior * tpr / (prior * tpr + prior + (1 - prior) * fpr)
        return 2 * np.sum(labels & (scores >= t)) / (np.sum(scores >= t) + labels.sum())

    best = max(np.unique(scores), key=lambda t: (f1(t), t))
    floor = np.quantile(scores[: len(scores) // 2], quantile)  # the clean pixels only
    if prior:  # no floor: here the prior's threshold lies below the quantile's
        assert threshold == pytest.approx(best) and best < floor
    else:
        assert threshold == pytest.approx(max(best, floor))
        assert (best > floor) == (binding == "pastes")
    assert candidates["pastes"] == pytest.approx(best)  # every candidate recorded
    assert candidates["quantile"] == pytest.approx(floor, rel=1e-6)
    # geomean: sqrt(the quantile's x the pastes rule's), whichever rule was asked for
    rule = best if prior else max(best, floor)
    assert candidates["geomean"] == pytest.approx(np.sqrt(floor * rule), rel=1e-6)
    config.eval.threshold_rule = "geomean"
    threshold, *_ = evaluate.calibrate(_BrightnessScorer(), {"val": val}, config)
    assert threshold == pytest.approx(np.sqrt(floor * rule), rel=1e-6)
