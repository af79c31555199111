"""Two-stage training on 4 virtual CPU devices: replication, frozen memory, loss, resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from cmaae_jax import (
    checkpoint,
    configlib,
    devices,
    inference,
    model,
    replicas,
    sharded_state,
    train,
)
from cmaae_jax import state as state_lib


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def test_steps_on_four_devices_keep_replicas_identical_and_freeze_memory(data_root):
    assert jax.local_device_count() == 4
    config = tiny_config(data_root)
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    # A learnable toy: every device sees the same flat grey images.
    images = np.full((4, 2, 64, 64, 3), 150, np.uint8)
    bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
    tx1 = state_lib.make_optimizer(config, state.params, 1)
    step1 = train.make_train_step(config, net, 1, tx1)
    rstate = sharded_state.place(state)
    losses = []
    for i in range(8):
        rstate, m = step1(rstate, images, bank, replicas.replicate(jax.random.key(i)))
        losses.append(float(m["loss"][0]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    for leaf in jax.tree.leaves((rstate.params, rstate.batch_stats)):
        leaf = np.asarray(leaf)
        assert all(np.array_equal(leaf[0], leaf[d]) for d in range(1, 4))
    after1 = _flat(replicas.unreplicate_to_host(rstate).params)

    state2 = state_lib.to_stage2(config, replicas.unreplicate_to_host(rstate))
    # The memory has no optimizer state in stage 2.
    n_adam = sum(x.size for x in jax.tree.leaves(state2.opt_state))
    n_params = sum(x.size for x in jax.tree.leaves(state2.params))
    n_memory = state2.params["memory"]["items"].size
    assert n_adam < 2 * n_params and n_adam >= 2 * (n_params - n_memory)
    tx2 = state_lib.make_optimizer(config, state2.params, 2)
    step2 = train.make_train_step(config, net, 2, tx2)
    rbank = replicas.replicate(jax.random.uniform(jax.random.key(5), (2, 64, 64, 3), minval=-1))
    rstate = sharded_state.place(state2)
    for i in range(3):
        rstate, m = step2(rstate, images, rbank, replicas.replicate(jax.random.key(10 + i)))
        assert np.isfinite(float(m["loss"][0]))
    after2 = _flat(replicas.unreplicate_to_host(rstate).params)
    for name, value in after2.items():
        if "memory" in name:
            assert np.array_equal(value, after1[name]), name  # bit-identical
    for part in ("encoder", "repair", "decoder"):
        changed = [not np.array_equal(v, after1[k]) for k, v in after2.items() if f"'{part}'" in k]
        assert changed and all(changed), part


def test_moving_average_follows_each_stages_parameters(data_root, tmp_path):
    d = 0.75
    steps = dict(train__stage1_steps=2, train__stage2_steps=3, train__ema_decay=d)
    config = tiny_config(data_root, train__checkpoint_every=1, train__keep_checkpoints=9, **steps)
    full = train.train(config, str(tmp_path / "full"))
    net = model.from_config(config)
    mgr = checkpoint.manager(tmp_path / "full", async_save=False)
    params = [_flat(state_lib.init_state(config, net).params)]
    params += [_flat(state_lib.restore_state(config, net, mgr, s)[1].params) for s in range(1, 6)]
    mgr.close()
    expected = {}
    for k in params[0]:  # by hand: restarted from the parameters each stage starts from
        e = params[0][k].astype(np.float64)
        for s in range(1, 6):
            e = params[2][k].astype(np.float64) if s == 3 else e  # stage 2 starts after step 2
            e = d * e + (1 - d) * params[s][k]
        expected[k] = e
    ema = _flat(full.ema)
    assert ema.keys() == expected.keys()
    for k in ema:
        np.testing.assert_allclose(ema[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    key = "['decoder']['deconv6']['kernel']"
    assert not np.allclose(ema[key], params[5][key])  # an average, not the last step
    _, variables = inference.restore_variables(config, str(tmp_path / "full"))
    for k, v in _flat(variables["params"]).items():
        np.testing.assert_array_equal(v, ema[k], err_msg=k)  # scored with the average
    last_config = tiny_config(data_root, score__weights="last", **steps)
    _, variables = inference.restore_variables(last_config, str(tmp_path / "full"))
    last = _flat(full.params)
    for k, v in _flat(variables["params"]).items():
        np.testing.assert_array_equal(v, last[k], err_msg=k)


def test_batch_not_divisible_by_devices_is_rejected_before_compiling(data_root):
    config = tiny_config(data_root, train__batch_size=6, train__crops_per_image=1)
    with pytest.raises(configlib.ConfigError, match="train.batch_size"):
        train.train(config, "/nonexistent/never/written")


@pytest.mark.parametrize(
    "field,value",
    [
        ("train__stage1_steps", -1),
        ("model__memory_size", 0),
        ("data__image_size", 100),
        ("model__variant", "lstm"),
        ("score__scales", (4,)),
        ("score__normalize", "mean"),
        ("eval__val_fraction", 1.5),
        ("eval__paste_prior", 1.0),
        ("eval__paste_prior", -0.1),
        ("anomaly__focus_crops", 1.5),
        ("train__cpu_scheduler", "fastest"),
        ("train__crop_placement", "edges"),
        ("train__crop_scales", (1, 3)),
        ("anomaly__thinnest_px", 17.0),  # the tiny config's paste is 32: at most 16
        ("train__ema_decay", 1.0),
        ("train__ema_decay", -0.5),
        ("score__weights", "best"),
        ("score__flip", "vertical"),
        ("loss__w_feat", -1.0),
        ("anomaly__min_opacity", 0.0),
        ("anomaly__min_opacity", 1.5),
        ("eval__image_score", "mean"),
    ],
)
def test_impossible_config_values_name_the_field(data_root, field, value):
    config = tiny_config(data_root, **{field: value})
    with pytest.raises(configlib.ConfigError, match=field.replace("__", ".")):
        configlib.validate(config)


def test_stage2_passes_its_crop_share_thinnest_stroke_and_opacity(data_root, monkeypatch):
    # 0.5 of 4 crops per image: 2 placed on the pastes, in stage 2 only; the crop placement
    # in both stages.
    config = tiny_config(
        data_root,
        anomaly__focus_crops=0.5,
        train__crops_per_image=4,
        train__crop_placement="cover",
    )
    assert train.focus_count(config) == 2
    config.anomaly.focus_crops = 0.3  # rounded: 1.2 -> 1
    assert train.focus_count(config) == 1
    config.anomaly.focus_crops = 0.5
    seen, placements, real = [], [], train.pyramid.patches.random_crops

    def spy(*args, focus=None, placement="uniform", **kwargs):
        seen.append(None if focus is None else (focus[0].shape, focus[0].dtype, focus[1]))
        placements.append(placement)
        return real(*args, focus=focus, placement=placement, **kwargs)

    monkeypatch.setattr(train.pyramid.patches, "random_crops", spy)
    thinnest, real_synthesize = [], train.gaaga.synthesize

    def spy_synthesize(*args):
        thinnest.append(args[7:9])
        return real_synthesize(*args)

    monkeypatch.setattr(train.gaaga, "synthesize", spy_synthesize)
    config.anomaly.thinnest_px = 3.0
    config.anomaly.min_opacity = 0.4
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    images = np.zeros((4, 1, 64, 64, 3), np.uint8)
    bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
    for stage in (1, 2):
        s = state_lib.to_stage2(config, state) if stage == 2 else state
        step = train.make_train_step(
            config, net, stage, state_lib.make_optimizer(config, s.params, stage)
        )
        jax.eval_shape(
            step, sharded_state.place(s), images, bank, replicas.replicate(jax.random.key(0))
        )
    assert seen == [None, ((1, 64, 64), jnp.bool_, 2)]
    assert placements == ["cover", "cover"]
    assert thinnest == [(3.0, 0.4)]  # stage 2 only


def test_cosine_schedule_factors_by_hand(data_root):
    config = tiny_config(data_root)
    with config.unlocked():
        config.train.lr_schedule = "cosine"
        config.train.stage1_steps, config.train.stage2_steps = 20, 10
        config.train.warmup_fraction = 0.2
    # Stage 1: 20 steps, warm-up 4 steps (1/4, 2/4, 3/4, 1), then
    # 0.5 * (1 + cos(pi * (s + 1 - 4) / 17)) for s = 4..19, reaching 0 at s = 19 + ... (s=20).
    expected1 = [(s + 1) / 4 for s in range(4)] + [
        0.5 * (1 + np.cos(np.pi * (s - 3) / 17)) for s in range(4, 20)
    ]
    got1 = [float(state_lib.lr_factor(config, 1, s)) for s in range(20)]
    np.testing.assert_allclose(got1, expected1, rtol=1e-6, atol=1e-7)
    # Stage 2 restarts at global step 20: warm-up 2 steps, then 0.5 * (1 + cos(pi * k / 9)).
    expected2 = [0.5, 1.0] + [0.5 * (1 + np.cos(np.pi * (s - 1) / 9)) for s in range(2, 10)]
    got2 = [float(state_lib.lr_factor(config, 2, 20 + s)) for s in range(10)]
    np.testing.assert_allclose(got2, expected2, rtol=1e-6, atol=1e-7)
    with config.unlocked():
        config.train.lr_schedule = "constant"
    assert state_lib.lr_factor(config, 1, 7) == 1.0


def _first_step(config, seed: int, key: int):
    """(loss, parameters before, parameters after) of one stage-1 step from the initial state,
    on random images drawn with `seed`."""
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    step = train.make_train_step(config, net, 1, state_lib.make_optimizer(config, state.params, 1))
    images = np.random.default_rng(seed).integers(0, 256, (4, 2, 64, 64, 3), np.uint8)
    bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
    new, m = step(sharded_state.place(state), images, bank, replicas.replicate(jax.random.key(key)))
    return float(m["loss"][0]), _flat(state.params), _flat(replicas.unreplicate_to_host(new).params)


def test_feature_term_adds_its_weighted_residual_to_the_steps_loss(data_root):
    """`loss.w_feat` adds w_feat * the layer-1 residual (tested by hand in test_model.py) to
    the loss of the same forward pass, reports it, and changes the update."""
    out = {}
    for w_feat in (0.0, 2.5):
        config = tiny_config(data_root, loss__w_feat=w_feat)
        net = model.from_config(config)
        state = state_lib.init_state(config, net)
        tx = state_lib.make_optimizer(config, state.params, 1)
        step = train.make_train_step(config, net, 1, tx)
        images = np.random.default_rng(2).integers(0, 256, (4, 2, 64, 64, 3), np.uint8)
        bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
        new, m = step(
            sharded_state.place(state), images, bank, replicas.replicate(jax.random.key(3))
        )
        out[w_feat] = ({k: float(v[0]) for k, v in m.items()}, _flat(new.params))
    plain, (with_feat, params_feat) = out[0.0][0], out[2.5]
    assert "feat" not in plain and with_feat["feat"] > 0
    assert with_feat["l1"] == pytest.approx(plain["l1"], rel=1e-6)
    expected = plain["loss"] + 2.5 * with_feat["feat"]
    assert with_feat["loss"] == pytest.approx(expected, rel=1e-5)
    moved = [np.abs(params_feat[k] - v).max() for k, v in out[0.0][1].items()]
    assert max(moved) > 1e-6


@pytest.mark.parametrize("compiled_from", ["replicas", "shapes"])
def test_compile_step_gives_the_steps_results_on_inputs_it_was_not_compiled_with(
    data_root, compiled_from
):
    """Compiled ahead from the replicas or from their shapes alone (`replica_shapes`, before
    they exist: `compiled_with_replicas`, which frees the programs cached before), the step
    gives the pmapped call's state bit for bit."""
    config = tiny_config(data_root)
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    step = train.make_train_step(config, net, 1, state_lib.make_optimizer(config, state.params, 1))
    bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
    blank = np.zeros((4, 2, 64, 64, 3), np.uint8)
    first_key = replicas.replicate(jax.random.key(0))
    args = (blank, bank, first_key)
    if compiled_from == "shapes":
        earlier = jax.jit(lambda x: 2 * x)  # a program compiled before, as the state's init
        earlier(1.0)
        assert earlier._cache_size() == 1
        compiled, copies = replicas.compiled_with_replicas(
            step, state, args, "", "default", sharded_state.place, sharded_state.shapes
        )
        assert earlier._cache_size() == 0  # freed; the compiled step still runs, below
        shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(sharded_state.shapes(state))]
        assert shapes == [(x.shape, x.dtype) for x in jax.tree.leaves(copies)]
        assert shapes[0][0][0] == jax.local_device_count() > 1
    else:
        compiled = replicas.compile_step(step, sharded_state.place(state), args)
    assert isinstance(compiled, jax.stages.Compiled)  # one process: the executable itself
    images = np.random.default_rng(3).integers(0, 256, (4, 2, 64, 64, 3), np.uint8)
    key = replicas.replicate(jax.random.key(7))
    ahead, m_ahead = compiled(sharded_state.place(state), images, bank, key)
    called, m_called = step(sharded_state.place(state), images, bank, key)
    assert float(m_ahead["loss"][0]) == float(m_called["loss"][0])
    for a, b in zip(jax.tree.leaves(ahead), jax.tree.leaves(called), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cosine_schedule_scales_the_first_update_by_the_warmup(data_root):
    """Adam's first update from the same state and batch, with and without the schedule: the
    parameter change of the cosine run is the constant run's times 1/warm-up steps."""
    deltas = {}
    for schedule in ("constant", "cosine"):
        config = tiny_config(data_root)
        with config.unlocked():
            config.train.lr_schedule = schedule
            config.train.stage1_steps, config.train.warmup_fraction = 8, 0.5  # warm-up 4
            config.train.learning_rate = 1e-2  # updates far above float32 rounding of params
        _, before, after = _first_step(config, seed=0, key=3)
        deltas[schedule] = {k: after[k] - before[k] for k in before}
    for k, d in deltas["constant"].items():
        np.testing.assert_allclose(deltas["cosine"][k], d / 4, rtol=1e-4, atol=1e-9, err_msg=k)


def test_memory_scheduler_keeps_the_step_and_holds_fewer_temporary_bytes(data_root):
    """`train.cpu_scheduler=memory` only reorders the step's instructions on a CPU: the same
    state, bit for bit, comes out as with XLA's default order, from fewer temporary bytes
    (XLA's own buffer assignment, per device)."""
    config = tiny_config(data_root)
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    step = train.make_train_step(config, net, 1, state_lib.make_optimizer(config, state.params, 1))
    images = np.random.default_rng(5).integers(0, 256, (4, 2, 64, 64, 3), np.uint8)
    args = (
        images,
        replicas.replicate(jnp.zeros((2, 64, 64, 3))),
        replicas.replicate(jax.random.key(2)),
    )
    out, temp = {}, {}
    for scheduler in ("default", "memory"):
        compiled = replicas.compile_step(step, sharded_state.place(state), args, "", scheduler)
        temp[scheduler] = compiled.memory_analysis().temp_size_in_bytes
        new, m = compiled(sharded_state.place(state), *args)
        out[scheduler] = (float(m["loss"][0]), _flat(replicas.unreplicate_to_host(new).params))
    assert temp["memory"] < temp["default"], temp
    assert out["memory"][0] == out["default"][0]  # the same arithmetic, in another order
    for name, value in out["default"][1].items():
        np.testing.assert_array_equal(out["memory"][1][name], value, err_msg=name)


def test_cpu_compiler_options_name_the_scheduler_on_cpu_only():
    memory = devices.CPU_SCHEDULERS["memory"]
    assert devices.cpu_compiler_options("memory", "cpu") == {"xla_cpu_scheduler_type": memory}
    assert devices.cpu_compiler_options("memory", "gpu") is None
    assert devices.cpu_compiler_options("default", "cpu") is None


def test_remat_keeps_the_step_and_its_gradients(data_root):
    """`train.remat=conv_outputs` recomputes the elementwise work in the backward pass: the
    loss and the updated parameters equal the plain step's (float rounding aside)."""
    out = {}
    for remat in ("none", "conv_outputs"):
        config = tiny_config(data_root, train__remat=remat)
        loss, _, after = _first_step(config, seed=1, key=4)
        out[remat] = (loss, after)
    assert out["conv_outputs"][0] == pytest.approx(out["none"][0], rel=1e-5)
    # Adam's first update is lr * g / (|g| + eps) (lr 2e-4): a wrong gradient moves most
    # parameters by ~4e-4; rounding moves only the few whose gradient is near eps.
    diff = np.concatenate(
        [np.abs(out["conv_outputs"][1][k] - v).ravel() for k, v in out["none"][1].items()]
    )
    assert np.mean(diff > 2e-5) < 1e-5, (np.mean(diff > 2e-5), diff.max())


def test_first_replica_is_the_first_devices_copy_without_an_op():
    per_device = jax.pmap(lambda x: x * 10 + jax.lax.axis_index("d"), axis_name="d")
    out = per_device(jnp.ones((4, 3)))
    np.testing.assert_array_equal(replicas.first_replica(out), np.full(3, 10.0))
    assert isinstance(replicas.first_replica(out), np.ndarray)


def test_crop_scales_crop_each_share_of_the_images_at_its_scale(data_root, monkeypatch):
    # train.crop_scales=(1, 2): of each device's 2 images, one cropped as loaded (64 px) and
    # one shrunk by 2 (32 px, reflected to a whole 64-px patch), in both stages.
    devices = jax.local_device_count()
    config = tiny_config(
        data_root,
        train__crop_scales=(1, 2),
        train__crops_per_image=4,
        train__batch_size=2 * 4 * devices,
    )
    canvases, real = [], train.pyramid.patches.random_crops

    def spy(key, images, *args, **kwargs):
        canvases.append(images.shape[:3])
        return real(key, images, *args, **kwargs)

    monkeypatch.setattr(train.pyramid.patches, "random_crops", spy)
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    images = np.zeros((devices, 2, 64, 64, 3), np.uint8)
    bank = replicas.replicate(jnp.zeros((2, 64, 64, 3)))
    for stage in (1, 2):
        s = state_lib.to_stage2(config, state) if stage == 2 else state
        step = train.make_train_step(
            config, net, stage, state_lib.make_optimizer(config, s.params, stage)
        )
        key = replicas.replicate(jax.random.key(0))
        out = jax.eval_shape(step, sharded_state.place(s), images, bank, key)
        assert out[1]["loss"].shape == (devices,)
    assert canvases == [(1, 64, 64)] * 4  # one image per scale per stage


def test_call_length_stops_before_each_log_line_checkpoint_and_stage_end(data_root):
    config = tiny_config(
        data_root, train__steps_per_call=4, train__log_every=10, train__checkpoint_every=6
    )
    # boundaries after step 6, 10, 12, 18, 20 (log and checkpoint) and at 13 (the stage end)
    got = [train.call_length(s, 13, config) for s in (0, 2, 3, 6, 7, 8, 10, 12)]
    assert got == [4, 4, 1, 4, 1, 1, 1, 1]  # 0-3 fits 6; 2-5 fits; 3-6 crosses 6; 6-9 fits 10
    config.train.steps_per_call = 1
    assert [train.call_length(s, 13, config) for s in (0, 3, 12)] == [1, 1, 1]


def test_several_steps_per_call_and_resumed_runs_end_where_one_uninterrupted_run_ends(
    data_root, tmp_path, monkeypatch
):
    """`train.steps_per_call=2`: each call loops over two steps on the device (their images
    and keys drawn per step as before); the run ends with the parameters and moving average
    of one step per call, up to float rounding (the loop is compiled apart), and its log has
    every line. Interrupted after stage 1 and in the middle of stage 2, the same command
    resumes it, and it ends bit for bit where it ends uninterrupted."""
    made = []
    make = train.make_multi_step
    monkeypatch.setattr(train, "make_multi_step", lambda *a, **k: made.append(k) or make(*a, **k))
    fields = dict(train__log_every=3, train__ema_decay=0.75, train__steps_per_call=2)
    runs = {}
    for per_call in (1, 2):
        # log lines after steps 3, 4 (stage 1's end), 6, 8; checkpoints every 2 steps: with
        # 2 per call, calls of 2 steps at 0, 4, 6, and single steps at 2, 3 (compiled apart)
        config = tiny_config(data_root, **{**fields, "train__steps_per_call": per_call})
        runs[per_call] = train.train(config, str(tmp_path / str(per_call)))
    assert int(runs[2].step) == int(runs[1].step) == 8
    assert made == [{"steps": 2}, {"steps": 2}]  # once per stage, only where asked
    for part_name in ("params", "ema"):
        a, b = _flat(getattr(runs[1], part_name)), _flat(getattr(runs[2], part_name))
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    initial = state_lib.init_state(config, model.from_config(config))
    trained = _flat(runs[2].params)
    moved = [np.abs(trained[k] - v).max() for k, v in _flat(initial.params).items()]
    assert max(moved) > 1e-3
    log = [json.loads(line) for line in (tmp_path / "2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 4, 6, 8]

    part = tmp_path / "part"
    after_stage1 = train.train(tiny_config(data_root, **fields, train__stage2_steps=0), str(part))
    assert int(after_stage1.step) == 4  # a stage with no step left keeps the state
    train.train(tiny_config(data_root, **fields, train__stage2_steps=2), str(part))
    resumed = train.train(tiny_config(data_root, **fields), str(part))
    assert int(resumed.step) == 8
    for part_name in ("params", "batch_stats", "opt_state", "ema"):
        a, b = _flat(getattr(runs[2], part_name)), _flat(getattr(resumed, part_name))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{part_name}{k}")
    log = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 4, 6, 8]
    assert (part / "loss.png").exists() and (part / "config.json").exists()
