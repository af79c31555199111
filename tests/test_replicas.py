"""replicas.py: a tree copied onto every device in the pmapped step's own layout, without a
program compiled per leaf shape."""

import jax
import numpy as np

from cmaae_jax import replicas


def _compiles(fn):
    """(fn(), how many programs XLA compiled while it ran)."""
    names = []

    def listen(name, secs, **kwargs):
        names.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        out = jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return out, names.count("/jax/core/compile/backend_compile_duration")


def test_replicate_copies_each_leaf_in_the_steps_layout_compiling_one_program():
    d = jax.local_device_count()
    assert d == 4
    rng = np.random.default_rng(0)
    host = {f"w{i}": rng.normal(size=(i + 1, 3)).astype(np.float32) for i in range(8)}
    tree = {
        "params": {k: jax.numpy.asarray(v) for k, v in host.items()},  # device arrays
        "count": np.int32(7),  # a host scalar
        "key": jax.random.key(3),
    }
    jax.clear_caches()
    rep, compiles = _compiles(lambda: replicas.replicate(tree))
    # the identity pmap that sets the step's layout and the key's stack and placement, not a
    # program per leaf shape (a stack of each device array compiled 19 here)
    assert compiles <= 3, compiles
    for k, v in host.items():
        got = rep["params"][k]
        assert got.shape == (d, *v.shape)
        for i in range(d):
            np.testing.assert_array_equal(np.asarray(got.addressable_data(i))[0], v)
    assert np.asarray(rep["count"]).tolist() == [7] * d
    key_data = np.asarray(jax.random.key_data(rep["key"]))
    np.testing.assert_array_equal(key_data, np.stack([jax.random.key_data(tree["key"])] * d))
    # the layout a pmapped step returns: feeding its output back compiles nothing more
    step = jax.pmap(lambda t: jax.tree.map(lambda x: x, t), axis_name=replicas.AXIS)
    out = step(rep)
    _, again = _compiles(lambda: step(out))
    assert again == 0
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(rep), strict=True):
        assert a.sharding == b.sharding
