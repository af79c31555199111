"""The per-position reference of normal maps (score.reference): build, apply, choose, carry."""

import copy
import json

import ml_collections
import numpy as np
import pytest
from conftest import untrained_workdir
from PIL import Image

from cmaae_jax import (
    calibration,
    configlib,
    evaluate,
    export,
    export_loader,
    inference,
    layouts,
    predict,
    reference,
    score_options,
)
from cmaae_jax import workdir as workdir_lib


def test_build_is_the_per_position_mean_and_spread_and_apply_uses_them():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[3.0, 2.0], [1.0, 0.0]], np.float32)
    ref = reference.build([a, b])
    var = np.array([[1.0, 0.0], [1.0, 4.0]])  # by hand; its median is 1
    spread = np.sqrt(var + 1.0)
    np.testing.assert_allclose(ref, [np.full((2, 2), 2.0), spread], rtol=1e-6)
    assert reference.kind_of(ref) == "zscore"
    np.testing.assert_allclose(reference.apply(ref, a), (a - 2.0) / spread, rtol=1e-6)
    mean_only = reference.of_kind(ref, "mean")
    assert reference.kind_of(mean_only) == "mean" and reference.kind_of(ref) == "zscore"
    np.testing.assert_array_equal(reference.apply(mean_only, a), [[-1, 0], [1, 2]])
    stack = reference.apply(mean_only, np.stack([a, b]))
    np.testing.assert_array_equal(stack[1], [[1, 0], [-1, -2]])
    assert reference.apply(None, a) is a and reference.of_kind(ref, None) is None
    # a map of another size: the reference is resampled; a constant stays that constant
    const = reference.build([np.full((4, 6), 2.5, np.float32)] * 2)
    np.testing.assert_array_equal(const[1], 1.0)  # no variance anywhere: a spread of 1
    steps = [np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)]
    steps[1][0, :2] = 2.0  # varies at 2 of 16 positions (var 1): median var 0, mean var 1/8
    np.testing.assert_allclose(reference.build(steps)[1, 1], np.sqrt(1 / 8), rtol=1e-6)
    np.testing.assert_allclose(reference.apply(const, np.full((8, 3), 3.0)), 0.5, atol=1e-6)


def test_a_reference_of_each_part_z_scores_them_apart_then_averages():
    """Maps with parts [h, w, 2] (msfr_pixel's, `score_options.COMPONENTS`): a mean and a spread per
    part, each part referred to its own, then the parts averaged; without one, their mean."""
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[3.0, 2.0], [1.0, 0.0]], np.float32)
    first, second = np.stack([a, 10 * b], -1), np.stack([b, 10 * a], -1)  # [2, 2, 2] each
    ref = reference.build([first, second])
    assert ref.shape == (4, 2, 2) and reference.parts(ref) == 2 and reference.parts(None) == 1
    var0 = np.array([[1.0, 0.0], [1.0, 4.0]])  # part 0: a and b, by hand (median var 1)
    np.testing.assert_allclose(ref[0], 2.0)
    np.testing.assert_allclose(ref[1], np.sqrt(var0 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(ref[2], 20.0)  # part 1: 10 b and 10 a, var 100 var0
    np.testing.assert_allclose(ref[3], np.sqrt(100 * var0 + 100.0), rtol=1e-6)
    want = 0.5 * ((a - 2.0) / ref[1] + (10 * b - 20.0) / ref[3])
    np.testing.assert_allclose(reference.apply(ref, first), want, rtol=1e-6)
    stacked = reference.apply(ref, np.stack([first, second]))
    np.testing.assert_allclose(stacked[0], want, rtol=1e-6)
    assert reference.apply(ref, [first, second])[1].shape == (2, 2)
    # as z-scored: the parts' z-scores weighted PART_WEIGHTS (w0 : w1, the pixel's more), by hand
    w0, w1 = reference.PART_WEIGHTS
    assert w1 > w0 > 0
    zscored = reference.of_kind(ref, "zscore")
    weighted = (w0 * (a - 2.0) / ref[1] + w1 * (10 * b - 20.0) / ref[3]) / (w0 + w1)
    np.testing.assert_allclose(reference.apply(zscored, first), weighted, rtol=1e-6)
    np.testing.assert_allclose(zscored[0::2], ref[0::2])  # the means untouched
    assert reference.kind_of(zscored) == "zscore"
    mean_only = reference.of_kind(ref, "mean")
    assert reference.kind_of(mean_only) == "mean" and reference.kind_of(ref) == "zscore"
    np.testing.assert_allclose(
        reference.apply(mean_only, first), 0.5 * ((a - 2.0) + (10 * b - 20.0)), rtol=1e-6
    )
    np.testing.assert_allclose(reference.fuse(first), 0.5 * (a + 10 * b))
    # a map of another size: each part's planes resampled; constants stay constants
    const = reference.build([np.stack([np.full((4, 6), 2.5), np.full((4, 6), 7.0)], -1)] * 2)
    parts = np.stack([np.full((8, 3), 3.0), np.full((8, 3), 9.0)], -1)
    np.testing.assert_allclose(reference.apply(const, parts), 0.5 * (0.5 + 2.0), atol=1e-6)


def _maps(structure, rng, n, shift=False):
    """Normal maps: `structure` (optionally rolled to a random place) plus noise."""
    out = []
    for _ in range(n):
        s = np.roll(structure, rng.integers(0, 32, 2), (0, 1)) if shift else structure
        out.append((s + rng.normal(0, 0.1, s.shape)).astype(np.float32))
    return out


def _excess(maps, q):
    pooled = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    return np.quantile(pooled, q) - pooled.mean()


def test_auto_uses_the_reference_only_where_it_narrows_the_normal_tail():
    rng = np.random.default_rng(0)
    structure = np.zeros((32, 32), np.float32)
    structure[10:12, :] = 3.0  # an edge of the part, badly reconstructed in every image
    train, held_out = _maps(structure, rng, 20), _maps(structure, rng, 10)
    ref = reference.build(train)
    kind, rec = reference.choose("auto", ref, held_out, 0.99)
    assert kind == reference.AUTO_KIND == rec["kind"] and rec["used"]
    assert rec["excess_none"] == pytest.approx(_excess(held_out, 0.99), rel=1e-5)
    minus = [m - ref[0] for m in held_out]  # the decision is the mean's
    assert rec["excess_mean"] == pytest.approx(_excess(minus, 0.99), rel=1e-5)
    assert rec["excess_mean"] < 0.5 * rec["excess_none"]
    # images of different sizes: auto never uses it, mean still does
    kind, rec = reference.choose("auto", ref, held_out, 0.99, one_size=False)
    assert kind is None and not rec["one_size"] and rec["excess_mean"] < rec["excess_none"]
    assert reference.choose("mean", ref, held_out, 0.99, one_size=False)[0] == "mean"
    assert reference.choose("zscore", ref, held_out, 0.99, one_size=False)[0] == "zscore"
    # pure noise (nothing aligned): the reference only adds its own noise -> not used
    flat = np.zeros((32, 32), np.float32)
    noise_ref = reference.build(_maps(flat, rng, 3))
    kind, rec = reference.choose("auto", noise_ref, _maps(flat, rng, 10), 0.99)
    assert kind is None and rec["excess_mean"] > rec["excess_none"]
    # a faint structure: the mean narrows the tail, by less than the margin for a few of these
    shares = []
    for amplitude in (0.06, 0.1, 0.15, 0.2, 0.3):
        faint = np.zeros((32, 32), np.float32)
        faint[10:12, :] = amplitude
        train, held = _maps(faint, rng, 20), _maps(faint, rng, 10)
        mean_ref = reference.build(train)
        share = 1 - _excess([m - mean_ref[0] for m in held], 0.99) / _excess(held, 0.99)
        kind, _ = reference.choose("auto", mean_ref, held, 0.99)
        assert (kind is not None) == (share >= reference.MIN_NARROWING), (amplitude, share)
        shares.append(share)
    assert min(shares) < reference.MIN_NARROWING < max(shares)
    assert any(0 < x < reference.MIN_NARROWING for x in shares)  # narrowed, not enough
    # `mean` always uses it, `none` never computes it
    assert reference.choose("mean", noise_ref, _maps(flat, rng, 2), 0.99)[0] == "mean"
    assert reference.choose("none", None, [], 0.99) == (None, {"setting": "none", "used": False})
    # no reference was built (auto on images of several sizes): nothing to subtract, whatever
    # the setting, and the held-out tail is still recorded
    kind, rec = reference.choose("mean", None, held_out, 0.99, one_size=False)
    assert kind is None and not rec["used"] and "excess_mean" not in rec
    assert rec["excess_none"] == pytest.approx(_excess(held_out, 0.99), rel=1e-5)
    with pytest.raises(ValueError, match="score.reference"):
        reference.choose("median", ref, held_out, 0.99)


class _IndexScorer:
    """Scores image i (a uint8 array filled with i) as the map maps_by_value[i]."""

    def __init__(self, maps_by_value):
        self.maps, self.scored = maps_by_value, []

    def batches(self, images):
        for j, im in enumerate(images):
            self.scored.append(int(im.flat[0]))
            yield np.array([j]), self.maps[int(im.flat[0])][None]

    def without_raw_msfr(self):
        return _IndexScorer([m[..., 1:] for m in self.maps])


def _split(values, shape=(16, 16), valid=None):
    n = len(values)
    imgs = [np.full(shape + (3,), v, np.uint8) for v in values]
    masks = [np.zeros(shape, np.uint8)] * n
    return layouts.Split(imgs, masks, np.zeros(n, np.int32), [f"{v}.png" for v in values],
                         ["good"] * n, sizes=np.array([valid or shape] * n, np.int32))  # fmt: skip


def test_calibrate_thresholds_the_maps_minus_the_training_reference():
    rng = np.random.default_rng(1)
    structure = np.zeros((16, 16), np.float32)
    structure[:, 7] = 5.0
    maps = _maps(structure, rng, 8)
    splits = {"train": _split(range(0, 5)), "val": _split(range(5, 8))}
    config = ml_collections.ConfigDict(
        {
            "score": {"reference": "auto", "reference_images": 3},
            "eval": {"threshold_quantile": 0.99},
        }
    )
    threshold, ref, record, *_ = evaluate.calibrate(_IndexScorer(maps), splits, config)
    picked = np.stack([maps[0], maps[2], maps[4]])  # 3 of 5 training images, evenly spaced
    var = picked.astype(np.float64).var(0)
    want = [picked.mean(0), np.sqrt(var + np.median(var))]
    if reference.AUTO_KIND == "mean":
        want[1] = np.ones_like(var)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-6)
    assert record["used"] and record["kind"] == reference.AUTO_KIND
    pooled = np.concatenate([((maps[i] - want[0]) / want[1]).ravel() for i in (5, 6, 7)])
    assert threshold == pytest.approx(np.quantile(pooled, 0.99), rel=1e-5)
    # held-out images of another (valid) size: auto uses no reference
    splits["val"] = _split(range(5, 8), valid=(16, 12))
    scorer = _IndexScorer(maps)
    threshold, ref, record, *_ = evaluate.calibrate(scorer, splits, config)
    assert ref is None and not record["used"] and not record["one_size"]
    assert sorted(scorer.scored) == [5, 6, 7]  # no training image scored for nothing
    pooled = np.concatenate([maps[i][:, :12].ravel() for i in (5, 6, 7)])
    assert threshold == pytest.approx(np.quantile(pooled, 0.99), rel=1e-5)


def _best_prior_f1_threshold(normal, pasted, masks, prior):
    """Brute force: the highest threshold of best F1 at defect share `prior`, every normal
    pixel negative and the pasted maps' pixels labelled by their masks."""
    scores = np.concatenate([m.ravel() for m in (*normal, *pasted)]).astype(np.float64)
    labels = np.concatenate([np.zeros(m.size, bool) for m in normal] + [k.ravel() for k in masks])

    def f1(t):
        tpr, fpr = np.mean(scores[labels] >= t), np.mean(scores[~labels] >= t)
        return 2 * prior * tpr / (prior * tpr + prior + (1 - prior) * fpr)

    return max(np.unique(scores), key=lambda t: (f1(t), t))


def test_auto_threshold_rule_is_geomean_on_z_scored_maps_and_the_pastes_rule_elsewhere(
    monkeypatch,
):
    rng = np.random.default_rng(7)
    structure = np.zeros((16, 16), np.float32)
    structure[:, 7] = 5.0
    maps = _maps(structure, rng, 8)
    masks = [np.zeros((16, 16), bool) for _ in range(3)]
    for k, mask in enumerate(masks):
        mask[2 + k : 7 + k, 3:9] = True
    pasted = [m + 1.0 * mask for m, mask in zip(maps[5:], masks, strict=True)]
    monkeypatch.setattr(evaluate, "pasted_held_out", lambda *a, **k: (pasted, masks))
    splits = {"train": _split(range(0, 5)), "val": _split(range(5, 8))}
    prior = 0.05
    config = ml_collections.ConfigDict(
        {
            "score": {"reference": "auto", "reference_images": 3},
            "eval": {"threshold_quantile": 0.99, "threshold_rule": "auto", "paste_prior": prior},
        }
    )
    chosen = evaluate.calibrate(_IndexScorer(maps), splits, config)
    assert chosen.reference_record["kind"] == reference.AUTO_KIND == "zscore"
    picked = np.stack([maps[0], maps[2], maps[4]]).astype(np.float64)  # by hand
    mean, var = picked.mean(0), picked.var(0)
    spread = np.sqrt(var + np.median(var))
    normal_z = [(m - mean) / spread for m in maps[5:]]
    pasted_z = [(m - mean) / spread for m in pasted]
    t_q = np.quantile(np.concatenate([z.ravel() for z in normal_z]), 0.99)
    t_p = _best_prior_f1_threshold(normal_z, pasted_z, masks, prior)
    assert 0 < t_q < t_p  # the pastes' threshold above the normal pixels' quantile
    assert calibration.AUTO_RULES["zscored"] == chosen.rule == "geomean"
    assert chosen.threshold == pytest.approx(np.sqrt(t_q * t_p), rel=1e-5)
    # images of several sizes: no reference, so the pastes rule on the maps as they are
    splits["val"] = _split(range(5, 8), valid=(16, 12))
    pasted = [m[:, :12] for m in pasted]
    masks[:] = [k[:, :12] for k in masks]
    chosen = evaluate.calibrate(_IndexScorer(maps), splits, config)
    assert chosen.ref is None and chosen.rule == calibration.AUTO_RULES["other"] == "pastes"
    t_p = _best_prior_f1_threshold([m[:, :12] for m in maps[5:]], pasted, masks, prior)
    assert chosen.threshold == pytest.approx(t_p, rel=1e-6)


def test_auto_method_rescores_aligned_images_with_the_aligned_method():
    """score.method=auto: the reference decision is made on raw msfr maps; where it applies a
    reference, the aligned method's parts make a reference each and the threshold is taken
    on their z-scores' average. Images of one size: one pass gives both, raw msfr first."""
    rng = np.random.default_rng(5)
    structure = np.zeros((16, 16), np.float32)
    structure[:, 7] = 5.0
    first = _maps(structure, rng, 8)
    part0 = [np.asarray(3.0 * m[::-1] + 1.0, np.float32) for m in _maps(structure, rng, 8)]
    part1 = [np.asarray(0.5 * m.T, np.float32) for m in _maps(structure, rng, 8)]
    second = [np.stack(pair, -1) for pair in zip(part0, part1, strict=True)]
    both = [np.stack(maps, -1) for maps in zip(first, part0, part1, strict=True)]
    splits = {"train": _split(range(0, 5)), "val": _split(range(5, 8))}
    config = ml_collections.ConfigDict(
        {
            "score": {"method": "auto", "reference": "auto", "reference_images": 3},
            "eval": {"threshold_quantile": 0.99},
        }
    )
    asked, made = [], []

    def rescorer(method, components=False, with_raw_msfr=False):
        asked.append((method, components, with_raw_msfr))
        made.append(_IndexScorer(both if with_raw_msfr else second))
        return made[-1]

    plain = _IndexScorer(first)
    chosen = evaluate.calibrate(plain, splits, config, rescorer=rescorer)
    assert asked == [(score_options.ALIGNED_METHOD, True, True)]
    assert chosen.method == score_options.ALIGNED_METHOD
    # each held-out and reference image scored once, by the one scorer; none twice
    assert plain.scored == [] and sorted(made[0].scored) == [0, 2, 4, 5, 6, 7]
    _, handed_on = next(chosen.scorer.batches([np.full((16, 16, 3), 6, np.uint8)]))
    np.testing.assert_array_equal(handed_on[0], second[6])  # the parts, raw msfr dropped
    z = np.zeros((3, 16, 16))
    for part in (part0, part1):  # by hand, each part on its own
        picked = np.stack([part[0], part[2], part[4]]).astype(np.float64)
        mean, var = picked.mean(0), picked.var(0)
        spread = np.sqrt(var + np.median(var))
        k = 0 if part is part0 else 2
        w0, w1 = reference.PART_WEIGHTS
        weight = (w0 if part is part0 else w1) / (w0 + w1)
        np.testing.assert_allclose(chosen.ref[k], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(chosen.ref[k + 1], spread / (2 * weight), rtol=1e-5)
        z += weight * (np.stack(part[5:]) - mean) / spread
    assert chosen.threshold == pytest.approx(np.quantile(z, 0.99), rel=1e-5)
    minus = [m - np.mean([first[0], first[2], first[4]], 0) for m in first[5:]]
    assert chosen.reference_record["excess_mean"] == pytest.approx(_excess(minus, 0.99), rel=1e-4)
    assert chosen.reference_record["method"] == score_options.ALIGNED_METHOD
    assert chosen.reference_record["components"] == list(score_options.COMPONENTS)
    assert chosen.reference_record["weights"] == list(reference.PART_WEIGHTS)
    # unaligned (raw msfr noise alone, the parts still structured): decided on raw msfr, so
    # no reference and the plain scorer handed on; the held-out maps are the raw msfr ones
    noise = _maps(np.zeros((16, 16), np.float32), rng, 8)
    both[:] = [np.stack(maps, -1) for maps in zip(noise, part0, part1, strict=True)]
    chosen = evaluate.calibrate(plain, splits, config, rescorer=rescorer)
    assert chosen.method == "msfr" and chosen.ref is None and chosen.scorer is plain
    assert not chosen.reference_record["used"] and plain.scored == []
    pooled = np.concatenate([m.ravel() for m in noise[5:]])
    assert chosen.threshold == pytest.approx(np.quantile(pooled, 0.99), rel=1e-5)
    # msfr_pixel asked for outright, with a reference: rescored by parts, no method change
    config.score.method, config.score.reference = "msfr_pixel", "zscore"
    chosen = evaluate.calibrate(_IndexScorer(first), splits, config, rescorer=rescorer)
    assert asked[-1] == ("msfr_pixel", True, False) and "method" not in chosen.reference_record
    assert chosen.threshold == pytest.approx(np.quantile(z, 0.99), rel=1e-5)
    # at two pyramid levels the parts are not apart: the (averaged) map itself is referred
    config.score.pyramid = (1, 2)
    chosen = evaluate.calibrate(_IndexScorer(first), splits, config, rescorer=rescorer)
    assert len(asked) == 3 and reference.parts(chosen.ref) == 1
    # images of several sizes: no reference, msfr maps, no rescoring
    config.score.method, config.score.reference, config.score.pyramid = "auto", "auto", (1,)
    splits["val"] = _split(range(5, 8), valid=(16, 12))
    chosen = evaluate.calibrate(_IndexScorer(first), splits, config, rescorer=rescorer)
    assert len(asked) == 3 and chosen.method == "msfr" and chosen.ref is None


def test_narrowing_and_near_miss_from_the_record():
    rec = {"setting": "auto", "used": False, "excess_none": 10.0, "excess_mean": 9.7}
    assert reference.narrowing(rec) == pytest.approx(0.03)  # 1 - 9.7 / 10, by hand
    margin = reference.MIN_NARROWING
    near = {**rec, "excess_mean": 10.0 * (1 - 0.75 * margin)}
    assert reference.near_miss(near)  # three quarters of the margin: at least half of it
    assert not reference.near_miss({**rec, "excess_mean": 10.0 * (1 - 0.4 * margin)})
    assert not reference.near_miss({**rec, "used": True, "excess_mean": 8.0})  # aligned
    assert not reference.near_miss({**rec, "setting": "mean"})  # no test was made
    no_test = {"setting": "auto", "used": False, "one_size": False, "excess_none": 3.0}
    assert reference.narrowing(no_test) is None and not reference.near_miss(no_test)


def test_calibrate_warns_where_auto_narrowly_finds_the_images_unaligned(caplog):
    splits = {"train": _split(range(0, 5)), "val": _split(range(5, 8))}
    config = ml_collections.ConfigDict(
        {
            "score": {"reference": "auto", "reference_images": 5},
            "eval": {"threshold_quantile": 0.99},
        }
    )
    seen = set()
    rng = np.random.default_rng(0)
    for amplitude in np.linspace(0.0, 0.3, 41):
        structure = np.ones((16, 16), np.float32)
        structure[:, 7] += amplitude
        maps = _maps(structure, rng, 8)
        minus = [m - np.mean(maps[:5], 0) for m in maps[5:]]
        share = 1 - _excess(minus, 0.99) / _excess(maps[5:], 0.99)  # by hand
        caplog.clear()
        with caplog.at_level("WARNING"):
            evaluate.calibrate(_IndexScorer(maps), splits, config)
        warned = any("narrowed their tail" in r.getMessage() for r in caplog.records)
        band = reference.MIN_NARROWING / 2 <= share < reference.MIN_NARROWING
        assert warned == band, (amplitude, share)
        seen.add(band)
    assert seen == {True, False}


def test_config_rejects_unknown_reference(tmp_path):
    from conftest import tiny_config

    config = tiny_config(tmp_path)
    config.score.reference = "always"
    with pytest.raises(configlib.ConfigError, match="score.reference"):
        configlib.validate(config)


def test_export_subtracts_the_reference_and_refuses_other_sizes(tmp_path):
    workdir = untrained_workdir(tmp_path / "run")
    config = workdir_lib.load_config(workdir)
    _, variables = inference.restore_variables(config, workdir)
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    plain = export_loader.load(_save(tmp_path / "a.jaxexport", config, variables, None))(x)
    mean = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    spread = np.linspace(0.5, 2, 64 * 64, dtype=np.float32).reshape(64, 64)
    mapper = export_loader.load(_save(tmp_path / "b.jaxexport", config, variables, [mean, spread]))
    assert mapper.meta["reference"] == {"shape": [64, 64], "kind": "zscore", "parts": 1}
    np.testing.assert_allclose(mapper(x), (plain - mean) / spread, rtol=1e-5, atol=1e-6)
    with pytest.raises(export_loader.ExportError, match="reference"):
        export_loader.check_reference_size(mapper.meta, [(64, 48)])
    # msfr_pixel with a reference of each part: the exported maps are the library's
    config.score.method = "msfr_pixel"
    parts = inference.Scorer(config, variables, components=True)(x)  # [2, 64, 64, 2]
    ref = [mean, spread, 2 * mean, 3 * spread]
    mapper = export_loader.load(_save(tmp_path / "c.jaxexport", config, variables, ref))
    assert mapper.meta["reference"]["parts"] == 2
    want = 0.5 * ((parts[..., 0] - mean) / spread + (parts[..., 1] - 2 * mean) / (3 * spread))
    np.testing.assert_allclose(mapper(x), want, rtol=1e-5, atol=1e-6)


def _save(path, config, variables, ref):
    export.save(path, config, variables, threshold=0.1, batch=2, reference=ref)
    return path


def test_predict_subtracts_the_saved_reference(tmp_path):
    workdir = untrained_workdir(tmp_path / "run")
    config = workdir_lib.load_config(workdir)
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    for i, im in enumerate(x):
        Image.fromarray(im).save(inputs / f"p{i}.png")
    _, variables = inference.restore_variables(config, workdir)
    plain = inference.Scorer(config, variables)(x)
    mean = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    spread = np.linspace(0.5, 2, 64 * 64, dtype=np.float32).reshape(64, 64)
    workdir_lib.eval_dir(workdir).mkdir(parents=True, exist_ok=True)
    path = workdir_lib.eval_dir(workdir) / reference.FILE
    reference.save(path, [mean, spread])
    predict.predict(workdir, str(inputs), tmp_path / "out", threshold=0.5)
    for i in range(2):
        got = np.load(tmp_path / "out" / f"p{i}_map.npy")
        np.testing.assert_allclose(got, (plain[i] - mean) / spread, rtol=1e-5, atol=1e-6)
    np.save(path, mean)  # a file from before the spread was kept: a mean
    predict.predict(workdir, str(inputs), tmp_path / "old", threshold=0.5)
    got = np.load(tmp_path / "old" / "p0_map.npy")
    np.testing.assert_allclose(got, plain[0] - mean, rtol=1e-5, atol=1e-6)


def test_predict_scores_with_the_fields_evaluation_used(tmp_path):
    """evaluate --config.score.method=pixel wrote the threshold for pixel maps: predict (and
    launch/export.py) score pixel maps too, not the trained run's MSFR."""
    workdir = untrained_workdir(tmp_path / "run")
    config = workdir_lib.load_config(workdir)
    assert config.score.method == "auto"  # msfr here: no reference
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.random.default_rng(4).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    Image.fromarray(x[0]).save(inputs / "p.png")
    _, variables = inference.restore_variables(config, workdir)
    msfr = inference.Scorer(config, variables)(x)[0]
    config.score.method = "pixel"
    pixel = inference.Scorer(config, variables)(x)[0]
    assert np.abs(pixel - msfr).max() > 1e-3  # the two maps differ: the test can tell them
    record = {"threshold": 0.5, "config_overrides": {"score.method": ["auto", "pixel"]}}
    workdir_lib.eval_dir(workdir).mkdir()
    workdir_lib.eval_metrics_path(workdir).write_text(json.dumps(record))
    predict.predict(workdir, str(inputs), tmp_path / "out")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "p_map.npy"), pixel, rtol=1e-5)
    assert workdir_lib.load_scoring_config(workdir).score.method == "pixel"
    for torn in ("{not json", '{"config_overrides": {"score.method": "pixel"}}'):
        workdir_lib.eval_metrics_path(workdir).write_text(torn)
        with pytest.raises(workdir_lib.WorkdirError, match="metrics.json holds no readable"):
            workdir_lib.load_scoring_config(workdir)


def test_auto_method_on_aligned_images_is_recorded_and_predict_follows_it(tmp_path):
    """score.reference=zscore (the user says aligned) with score.method=auto: evaluation
    scores ALIGNED_METHOD maps, records the method, and predict maps the same way."""
    workdir = untrained_workdir(
        tmp_path / "run", score__method="auto", score__reference="zscore", score__reference_images=4
    )
    result = evaluate.evaluate(None, str(workdir))
    method = score_options.ALIGNED_METHOD
    assert result["method"] == method and result["reference"]["method"] == method
    assert result["config_overrides"] == {"score.method": ["auto", method]}
    config = workdir_lib.load_scoring_config(workdir)
    assert config.score.method == method
    assert result["reference"]["components"] == list(score_options.COMPONENTS)
    ref = reference.load(workdir_lib.eval_dir(workdir) / reference.FILE)
    assert reference.parts(ref) == len(score_options.COMPONENTS)
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.random.default_rng(6).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    Image.fromarray(x[0]).save(inputs / "p.png")
    _, variables = inference.restore_variables(config, workdir)
    parts = inference.Scorer(config, variables, components=True)(x)[0]  # [64, 64, 2]
    msfr_pixel = inference.Scorer(config, variables)(x)[0]
    with_raw = inference.Scorer(config, variables, components=True, with_raw_msfr=True)
    np.testing.assert_allclose(with_raw(x)[0][..., 1:], parts, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(with_raw.without_raw_msfr()(x)[0], with_raw(x)[0][..., 1:])
    raw_config = copy.deepcopy(config)
    raw_config.score.method = "msfr"
    raw = inference.Scorer(raw_config, variables)(x)[0]
    np.testing.assert_allclose(with_raw(x)[0][..., 0], raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts.mean(-1), msfr_pixel, rtol=1e-5, atol=1e-6)
    want = reference.apply(ref, parts)
    predict.predict(workdir, str(inputs), tmp_path / "out")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "p_map.npy"), want, rtol=1e-5, atol=1e-6)


def test_save_writes_atomically_and_none_removes_a_stale_reference(tmp_path):
    path = tmp_path / reference.FILE
    mean = np.arange(6, dtype=np.float32).reshape(2, 3)
    reference.save(path, [mean, 2 * np.ones_like(mean)])
    np.testing.assert_array_equal(reference.load(path), np.stack([mean, 2 * np.ones_like(mean)]))
    assert [p.name for p in tmp_path.iterdir()] == [reference.FILE]  # no temporary left
    reference.save(path, None)  # an evaluation that chose no reference
    assert not path.exists() and reference.load(path) is None
    reference.save(path, None)  # nothing to remove: no error
