"""The segment head: its loss by hand, its wiring into init, stage 2 and the maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from cmaae_jax import (
    calibration,
    configlib,
    losses,
    model,
    replicas,
    scoring,
    segmenter,
    sharded_state,
    train,
)
from cmaae_jax import state as state_lib


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_bce_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 5, 7)).astype(np.float32)
    mask = (rng.random((2, 5, 7)) < 0.3).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -np.mean(mask * np.log(p) + (1 - mask) * np.log(1 - p))
    got = float(losses.segmentation_bce(jnp.asarray(logits), jnp.asarray(mask)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_score_is_minus_log_of_the_normal_probability():
    logits = np.array([-30.0, -2.0, 0.0, 3.0, 40.0], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    with np.errstate(divide="ignore"):
        expected = -np.log1p(-p)
    expected[-1] = 40.0  # 1 - p underflows in float64 too; softplus(x) -> x
    got = np.asarray(segmenter.anomaly_score(jnp.asarray(logits)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
    assert np.all(np.diff(got) > 0)  # no ties at the confident end


def test_upsample_repeats_each_pixel_into_a_two_by_two_block():
    x = jnp.arange(6.0).reshape(1, 2, 3, 1)
    got = np.asarray(segmenter._upsample2(x))[0, :, :, 0]
    expected = np.array([[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2, np.float32)
    np.testing.assert_array_equal(got, expected)


def test_head_adds_parameters_and_leaves_the_auto_encoders_initialisation(data_root):
    plain = model.from_config(tiny_config(data_root))
    headed = model.from_config(tiny_config(data_root, model__segment_head=True))
    a = _flat(model.init(plain, jax.random.key(3)))
    b = _flat(model.init(headed, jax.random.key(3)))
    extra = set(b) - set(a)
    assert set(a) <= set(b) and extra and all("segmenter" in k for k in extra)
    for k, v in a.items():
        np.testing.assert_array_equal(v, b[k], err_msg=k)


def test_a_whole_image_gives_logits_of_its_size():
    net = segmenter.Segmenter(impl="xla")
    x = jnp.zeros((2, 64, 96, 3))
    variables = net.init(jax.random.key(0), x, x)
    out = net.apply(variables, x, x)
    assert out.shape == (2, 64, 96)
    with pytest.raises(ValueError, match="divisible by 4"):
        net.apply(variables, x[:, :62], x[:, :62])


def _stage2_steps(config, state, keys):
    """Host state and per-step metrics after one stage-2 step per key in `keys`, on grey images
    with random natural patches pasted (a key draws the pastes and the crops)."""
    net = model.from_config(config)
    tx = state_lib.make_optimizer(config, state.params, 2)
    step = train.make_train_step(config, net, 2, tx)
    images = np.full((4, 2, 64, 64, 3), 150, np.uint8)
    bank = replicas.replicate(jax.random.uniform(jax.random.key(5), (2, 64, 64, 3), minval=-1))
    rstate, metrics = sharded_state.place(state), []
    for k in keys:
        rstate, m = step(rstate, images, bank, replicas.replicate(jax.random.key(k)))
        metrics.append({k: float(v[0]) for k, v in m.items()})
    return replicas.unreplicate_to_host(rstate), metrics


def test_stage2_trains_the_head_without_touching_the_auto_encoders_updates(data_root):
    plain_cfg = tiny_config(data_root)
    head_cfg = tiny_config(data_root, model__segment_head=True)
    # The head learns visibly within a few steps at 1e-3; at 3e-3 its loss spiked after four
    # steps on one machine and not on another (Adam's early steps on a tiny batch).
    with head_cfg.unlocked():
        head_cfg.train.learning_rate = 1e-3
    with plain_cfg.unlocked():
        plain_cfg.train.learning_rate = 1e-3
    head_state = state_lib.to_stage2(
        head_cfg, state_lib.init_state(head_cfg, model.from_config(head_cfg))
    )
    plain_params = {k: v for k, v in head_state.params.items() if k != "segmenter"}
    plain_state = state_lib.to_stage2(
        plain_cfg,
        state_lib.TrainState(
            head_state.step,
            plain_params,
            head_state.batch_stats,
            state_lib.make_optimizer(plain_cfg, plain_params, 1).init(plain_params),
        ),
    )
    keys = [10] * 8  # one batch (pastes and crops) at every step
    plain_after, plain_m = _stage2_steps(plain_cfg, plain_state, keys)
    head_after, head_m = _stage2_steps(head_cfg, head_state, keys)
    got, expected = _flat(head_after.params), _flat(plain_after.params)
    for k, v in expected.items():  # the head's loss sends no gradient into the auto-encoder
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    before = _flat(head_state.params)
    assert all(not np.array_equal(got[k], before[k]) for k in got if "segmenter" in k)
    for p, h in zip(plain_m, head_m, strict=True):
        assert h["loss"] == pytest.approx(p["loss"] + h["seg_bce"], rel=1e-5)
    # The metrics are computed before each update: on the same batch, the head errs less after
    # every step.
    seg = [m["seg_bce"] for m in head_m]
    assert all(seg[i + 1] < seg[i] for i in range(len(seg) - 1)) and seg[-1] < 0.8 * seg[0], seg


def test_segment_maps_are_the_heads_scores_of_the_blended_reconstruction(data_root):
    config = tiny_config(data_root, model__segment_head=True)
    net = model.from_config(config)
    variables = model.init(net, jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (2, 64, 128, 3), minval=-1)
    fn = scoring.make_map_fn(net, "segment", (1,), stride=32)
    got = np.asarray(fn(variables, images))
    rec = scoring.reconstruct(net, variables, images, 32)
    logits = np.asarray(net.apply(variables, images, rec, method="segment"), np.float64)
    np.testing.assert_allclose(got, np.log1p(np.exp(logits)), rtol=1e-4, atol=1e-6)


def test_segment_maps_need_a_trained_head(data_root):
    config = tiny_config(data_root, score__method="segment")
    with pytest.raises(configlib.ConfigError, match="score.method"):
        configlib.validate(config)
    configlib.validate(tiny_config(data_root, score__method="segment", model__segment_head=True))


def test_head_rule_is_the_boundary_p_one_half_whatever_the_normal_maps():
    normal = np.random.default_rng(0).random(1000).astype(np.float32)
    assert calibration.label_free_threshold("head", normal, 0.999) == pytest.approx(np.log(2))
    p = 1 / (1 + np.exp(-0.0))  # logit 0
    assert float(segmenter.anomaly_score(jnp.float32(0.0))) == pytest.approx(-np.log(1 - p))
    got = calibration.label_free_threshold("quantile", normal, 0.9)
    assert got == pytest.approx(np.quantile(normal, 0.9), rel=1e-6)


def test_head_rule_needs_segment_maps(data_root):
    config = tiny_config(data_root, eval__threshold_rule="head")
    with pytest.raises(configlib.ConfigError, match="eval.threshold_rule"):
        configlib.validate(config)
    ok = tiny_config(
        data_root, eval__threshold_rule="head", score__method="segment", model__segment_head=True
    )
    configlib.validate(ok)


def test_export_records_the_head(data_root):
    from cmaae_jax import export

    config = tiny_config(data_root, model__segment_head=True, score__method="segment")
    meta = export.describe(config, threshold=0.5, batch=2)
    assert meta["model"]["segment_head"] is True and meta["method"] == "segment"
    assert export.describe(tiny_config(data_root), 0.5, 2)["model"]["segment_head"] is False
