"""sharded_state.py: the optimizer state split over the devices, one chunk each, gives the
update of every device updating everything, and goes to the devices and back whole."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmaae_jax import replicas, sharded_state
from cmaae_jax import state as state_lib

D = 4  # conftest's virtual CPU devices


def _params(rng):
    # sizes that 4 devices do not divide (5, 7x3) and one they do, and a frozen group
    return {
        "enc": {"w": rng.normal(size=(7, 3)).astype(np.float32), "b": rng.normal(size=5)},
        "dec": {"w": rng.normal(size=(4, 2, 2)).astype(np.float32)},
        "memory": {"m": rng.normal(size=(3, 2)).astype(np.float32)},
    }


def _as_f32(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def _adam(lr, b1, b2, eps, g, m, v, p, t):
    """One Adam step in plain numpy (t: the step number, from 1)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def test_split_adam_steps_equal_plain_adam_on_the_mean_gradient_and_freeze_the_memory():
    # ... and the split moving average equals the average of the whole parameters
    assert jax.local_device_count() == D
    rng = np.random.default_rng(0)
    params = _as_f32(_params(rng))
    labels = {
        k: jax.tree.map(lambda _, k=k: "frozen" if k == "memory" else "train", v)
        for k, v in params.items()
    }
    tx = optax.multi_transform(
        {"train": optax.adam(0.1, b1=0.5, b2=0.9), "frozen": optax.set_to_zero()}, labels
    )
    state = state_lib.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), params)
    rstate = sharded_state.place(state)
    factor = 0.5  # the learning-rate schedule's multiplier

    def average(ema, p):
        return jax.tree.map(lambda e, x: 0.75 * e + 0.25 * x, ema, p)

    def step(s, g):
        p, opt, ema = sharded_state.update(tx, g, s.opt_state, s.params, factor, s.ema, average)
        return s.replace(params=p, opt_state=opt, ema=ema)

    step = jax.pmap(step, axis_name=replicas.AXIS)
    want = {k: dict(v) for k, v in params.items()}
    moments = {k: (0 * params["enc"][k], 0 * params["enc"][k]) for k in params["enc"]}
    moments["w_dec"] = (0 * params["dec"]["w"], 0 * params["dec"]["w"])
    want_ema = jax.tree.map(lambda x: x.astype(np.float64), params)
    for t in (1, 2, 3):
        grads = [_as_f32(_params(rng)) for _ in range(D)]  # one per device
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *grads)
        rstate = step(rstate, stacked)
        mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0, dtype=np.float64), *grads)
        for name in ("w", "b"):
            m, v = moments[name]
            p, m, v = _adam(0.05, 0.5, 0.9, 1e-8, mean["enc"][name], m, v, want["enc"][name], t)
            want["enc"][name], moments[name] = p, (m, v)
        m, v = moments["w_dec"]
        p, m, v = _adam(0.05, 0.5, 0.9, 1e-8, mean["dec"]["w"], m, v, want["dec"]["w"], t)
        want["dec"]["w"], moments["w_dec"] = p, (m, v)
        want_ema = jax.tree.map(lambda e, x: 0.75 * e + 0.25 * x, want_ema, want)
    host = sharded_state.to_host(rstate, tx)
    for i in range(D):  # every device holds the same, whole parameters
        got = jax.tree.map(lambda x, i=i: np.asarray(x.addressable_data(i))[0], rstate.params)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, host.params)
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6), host.params, want
    )
    np.testing.assert_array_equal(host.params["memory"]["m"], params["memory"]["m"])
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6), host.ema, want_ema
    )
    assert rstate.ema["enc"]["w"].shape == (D, 6)  # 21 numbers, chunks of 6
    adam_state = host.opt_state.inner_states["train"].inner_state[0]
    assert int(adam_state.count) == 3
    np.testing.assert_allclose(adam_state.mu["enc"]["b"], moments["b"][0], rtol=2e-5)
    np.testing.assert_allclose(adam_state.nu["dec"]["w"], moments["w_dec"][1], rtol=2e-5)


@pytest.mark.parametrize("with_average", [False, True])
def test_place_gives_each_device_its_chunk_and_to_host_joins_them_back(with_average):
    rng = np.random.default_rng(1)
    params = _as_f32(_params(rng))
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    mu = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), opt[0].mu)
    opt = (opt[0]._replace(count=jnp.int32(5), mu=mu), *opt[1:])
    ema = _as_f32(_params(rng)) if with_average else None
    state = state_lib.TrainState(jnp.int32(9), params, {"bn": np.ones(3, np.float32)}, opt, ema)
    rstate = sharded_state.place(state)
    shapes = sharded_state.shapes(state)
    got = [(x.shape, x.dtype) for x in jax.tree.leaves(rstate)]
    assert got == [(x.shape, x.dtype) for x in jax.tree.leaves(shapes)]
    # enc/w: 21 numbers over 4 devices, chunks of 6 (3 zeros of padding on the last)
    chunks = np.asarray(rstate.opt_state[0].mu["enc"]["w"])
    assert chunks.shape == (D, 6)
    flat = mu["enc"]["w"].reshape(-1)
    for i in range(D):
        np.testing.assert_array_equal(chunks[i, : len(flat[6 * i : 6 * i + 6])], flat[6 * i :][:6])
    np.testing.assert_array_equal(chunks[-1, 3:], 0.0)
    if with_average:  # enc/b: 5 numbers, chunks of 2
        b = ema["enc"]["b"]
        want = np.array([b[0:2], b[2:4], [b[4], 0.0], [0.0, 0.0]], np.float32)
        np.testing.assert_array_equal(np.asarray(rstate.ema["enc"]["b"]), want)
    back = sharded_state.to_host(rstate, tx)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, state
    )


def test_a_step_given_whole_moments_says_how_to_place_the_state():
    params = {"w": np.ones((4, 3), np.float32)}
    tx = optax.adam(1e-3)
    state = state_lib.TrainState(jnp.int32(0), params, {}, tx.init(params))

    def step(s):
        return sharded_state.update(tx, s.params, s.opt_state, s.params, 1.0)

    with pytest.raises(ValueError, match="optimizer state has whole leaves.*sharded_state.place"):
        jax.pmap(step, axis_name=replicas.AXIS)(replicas.replicate(state))
    new_params, _, _ = jax.pmap(step, axis_name=replicas.AXIS)(sharded_state.place(state))
    assert new_params["w"].shape == (D, 4, 3)


def test_a_step_given_a_whole_moving_average_says_how_to_place_the_state():
    params = {"w": np.ones((4, 3), np.float32)}
    tx = optax.adam(1e-3)
    state = state_lib.TrainState(jnp.int32(0), params, {}, tx.init(params))
    whole_average = sharded_state.place(state).replace(ema=replicas.replicate(params))

    def step(s):
        return sharded_state.update(tx, s.params, s.opt_state, s.params, 1.0, s.ema, max)

    with pytest.raises(ValueError, match="moving average has whole leaves.*sharded_state.place"):
        jax.pmap(step, axis_name=replicas.AXIS)(whole_average)
