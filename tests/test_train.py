"""Two-stage training on 4 virtual CPU devices: replication, frozen memory, loss, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from cmaae_jax import configlib, model, train
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
    bank = train.replicate(jnp.zeros((2, 64, 64, 3)))
    tx1 = state_lib.make_optimizer(config, state.params, 1)
    step1 = train.make_train_step(config, net, 1, tx1)
    rstate = train.replicate(state)
    losses = []
    for i in range(8):
        rstate, m = step1(rstate, images, bank, train.replicate(jax.random.key(i)))
        losses.append(float(m["loss"][0]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    for leaf in jax.tree.leaves((rstate.params, rstate.batch_stats)):
        leaf = np.asarray(leaf)
        assert all(np.array_equal(leaf[0], leaf[d]) for d in range(1, 4))
    after1 = _flat(train.unreplicate_to_host(rstate).params)

    state2 = state_lib.to_stage2(config, train.unreplicate_to_host(rstate))
    # The memory has no optimizer state in stage 2.
    n_adam = sum(x.size for x in jax.tree.leaves(state2.opt_state))
    n_params = sum(x.size for x in jax.tree.leaves(state2.params))
    n_memory = state2.params["memory"]["items"].size
    assert n_adam < 2 * n_params and n_adam >= 2 * (n_params - n_memory)
    tx2 = state_lib.make_optimizer(config, state2.params, 2)
    step2 = train.make_train_step(config, net, 2, tx2)
    rbank = train.replicate(jax.random.uniform(jax.random.key(5), (2, 64, 64, 3), minval=-1))
    rstate = train.replicate(state2)
    for i in range(3):
        rstate, m = step2(rstate, images, rbank, train.replicate(jax.random.key(10 + i)))
        assert np.isfinite(float(m["loss"][0]))
    after2 = _flat(train.unreplicate_to_host(rstate).params)
    for name, value in after2.items():
        if "memory" in name:
            assert np.array_equal(value, after1[name]), name  # bit-identical
    for part in ("encoder", "repair", "decoder"):
        changed = [not np.array_equal(v, after1[k]) for k, v in after2.items() if f"'{part}'" in k]
        assert changed and all(changed), part


def test_resumed_run_ends_with_the_same_parameters(data_root, tmp_path):
    full = train.train(tiny_config(data_root), str(tmp_path / "full"))
    # Interrupted twice: after stage 1 and in the middle of stage 2; the same command resumes.
    part = tmp_path / "part"
    train.train(tiny_config(data_root, train__stage2_steps=0), str(part))
    train.train(tiny_config(data_root, train__stage2_steps=2), str(part))
    resumed = train.train(tiny_config(data_root), str(part))
    assert int(resumed.step) == int(full.step) == 8
    a, b = _flat(full.params), _flat(resumed.params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    log = (part / "metrics.jsonl").read_text().splitlines()
    assert len(log) >= 8 and (part / "loss.png").exists() and (part / "config.json").exists()


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
    ],
)
def test_impossible_config_values_name_the_field(data_root, field, value):
    config = tiny_config(data_root, **{field: value})
    with pytest.raises(configlib.ConfigError, match=field.replace("__", ".")):
        configlib.validate(config)
