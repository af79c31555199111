"""CMA-AE model: Table I shapes, memory addressing by hand, gate semantics, variants, jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import losses, memory, model

# Table I, layer by layer: kernel [kh, kw, cin, cout] and whether a bias exists.
ENCODER_SHAPES = {
    "conv1": ((4, 4, 3, 32), True),
    "conv2": ((3, 3, 32, 32), False),
    "conv3": ((4, 4, 32, 64), False),
    "conv4": ((4, 4, 64, 128), False),
    "conv5": ((4, 4, 128, 256), False),
    "conv6": ((4, 4, 256, 512), True),
}
DECODER_SHAPES = {
    "deconv1": ((4, 4, 512, 256), False),
    "deconv2": ((4, 4, 256, 128), False),
    "deconv3": ((4, 4, 128, 64), False),
    "deconv4": ((4, 4, 64, 32), False),
    "deconv5": ((3, 3, 32, 32), False),
    "deconv6": ((4, 4, 32, 3), True),
}


@pytest.fixture(scope="module")
def cmam():
    m = model.CMAAE(variant="cmam", memory_size=500)
    return m, model.init(m, jax.random.key(0))


def test_parameter_shapes_follow_table_one(cmam):
    _, variables = cmam
    params = variables["params"]
    for part, table in (("encoder", ENCODER_SHAPES), ("decoder", DECODER_SHAPES)):
        for name, (shape, has_bias) in table.items():
            assert params[part][name]["kernel"].shape == shape, name
            assert ("bias" in params[part][name]) == has_bias, name
    assert set(params["encoder"]) == set(ENCODER_SHAPES) | {"bn2", "bn3", "bn4", "bn5"}
    assert set(params["decoder"]) == set(DECODER_SHAPES) | {f"bn{i}" for i in range(1, 6)}
    assert params["memory"]["items"].shape == (500, 512)
    bound = 1 / np.sqrt(512)
    assert np.abs(params["memory"]["items"]).max() <= bound
    for gate in ("forget", "input", "candidate"):
        assert params["repair"][gate]["kernel"].shape == (1024, 512)
        assert params["repair"][gate]["bias"].shape == (512,)


def test_patch_and_image_shapes(cmam):
    m, variables = cmam
    x = jnp.zeros((3, 64, 64, 3))
    rec, aux = m.apply(variables, x)
    chex.assert_shape(rec, (3, 64, 64, 3))
    chex.assert_shape(aux["z"], (3, 512))
    feats = m.apply(variables, jnp.zeros((1, 512, 512, 3)), method=model.CMAAE.features)
    assert [f.shape for f in feats] == [(1, 256, 256, 32), (1, 256, 256, 32), (1, 128, 128, 64)]


def _numpy_address(z, mem, lam):
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    mn = mem / np.linalg.norm(mem, axis=1, keepdims=True)
    cos = zn @ mn.T
    w = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    w_hat = np.where(w > lam, w, 0.0)  # relu(w-l)*w/|w-l| is w above lambda and 0 below
    w_hat = w_hat / w_hat.sum(1, keepdims=True)
    ent = -(w_hat * np.log(w_hat + 1e-12)).sum(1)
    return w_hat @ mem, w_hat, ent


def test_memory_addressing_by_hand():
    mem = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    z = np.array([[2.0, 0, 0, 0]], np.float32)
    # cos(z, m) = (1, 0, 1/sqrt2); softmax -> e^1, e^0, e^0.7071 over their sum
    e = np.exp([1.0, 0.0, 1 / np.sqrt(2)])
    w = e / e.sum()  # e = (2.71828, 1, 2.02811), sum 5.74639
    z_mem, w_hat, ent = memory.address(jnp.asarray(z), jnp.asarray(mem))
    np.testing.assert_allclose(w, [0.47304, 0.17402, 0.35294], atol=1e-5)  # by hand
    expected_w_hat = np.array([w[0], 0.0, w[2]]) / (w[0] + w[2])  # 0.174 < 1/3 is shrunk
    np.testing.assert_allclose(w_hat[0], expected_w_hat, atol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(w_hat)), 1.0, atol=1e-6)
    np.testing.assert_allclose(z_mem[0], expected_w_hat @ mem, atol=1e-6)
    p = expected_w_hat[[0, 2]]
    np.testing.assert_allclose(ent[0], -(p * np.log(p)).sum(), atol=1e-6)


def test_memory_addressing_matches_numpy_on_random_memory():
    rng = np.random.default_rng(0)
    mem = rng.normal(size=(7, 5)).astype(np.float32)
    z = rng.normal(size=(4, 5)).astype(np.float32)
    want = _numpy_address(z, mem, 1 / 7)
    got = memory.address(jnp.asarray(z), jnp.asarray(mem))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5)
    # an explicit threshold and the dot similarity
    zs = z * 3
    logits = zs @ mem.T
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    w_hat = np.where(w > 0.05, w, 0)
    w_hat /= w_hat.sum(1, keepdims=True)
    _, got_w, _ = memory.address(jnp.asarray(zs), jnp.asarray(mem), "dot", 0.05)
    np.testing.assert_allclose(got_w, w_hat, atol=1e-5)


def test_temperature_sharpens_cosine_addressing_by_hand():
    mem = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    z = np.array([[2.0, 0, 0, 0]], np.float32)
    # cos = (1, 0, 1/sqrt2); at tau = 0.1: softmax of (10, 0, 7.0711)
    e = np.exp([10.0, 0.0, 10 / np.sqrt(2)])
    w = e / e.sum()
    np.testing.assert_allclose(w, [0.94922, 0.00004, 0.05074], atol=1e-5)  # e^10 = 22026.5
    _, w_hat, _ = memory.address(jnp.asarray(z), jnp.asarray(mem), temperature=0.1)
    # item 2 (0.0507) is below 1/3 now too: only item 0 survives the shrinkage
    np.testing.assert_allclose(w_hat[0], [1.0, 0.0, 0.0], atol=1e-6)
    # at tau = 1 both 0 and 2 survive (test_memory_addressing_by_hand); on random memories the
    # numpy reference with the logits divided by tau agrees
    rng = np.random.default_rng(3)
    mem, z = rng.normal(size=(9, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    mn = mem / np.linalg.norm(mem, axis=1, keepdims=True)
    logits = zn @ mn.T / 0.25
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    want = np.where(w > 1 / 9, w, 0)
    want /= want.sum(1, keepdims=True)
    got = memory.address(jnp.asarray(z), jnp.asarray(mem), temperature=0.25)[1]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_scaled_softmax_gates_average_one():
    frm = memory.FeatureRepair(gate="softmax_scaled")
    z = jnp.ones((2, 4))
    params = frm.init(jax.random.key(0), z, z)["params"]
    params = jax.tree.map(jnp.zeros_like, params)  # gates 4 * 1/4 = 1, candidate tanh(0) = 0
    np.testing.assert_allclose(frm.apply({"params": params}, z * 8, z), z * 8, atol=1e-6)
    # with a bias favouring feature 0 the forget gate is 4 * softmax(bias): by hand
    params["forget"]["bias"] = jnp.array([1.0, 0.0, 0.0, 0.0])
    e = np.exp([1.0, 0.0, 0.0, 0.0])
    want = 4 * e / e.sum() * 8.0
    np.testing.assert_allclose(frm.apply({"params": params}, z * 8, z)[0], want, atol=1e-5)


def _grads(z, mem):
    def f(z, mem):
        z_mem, _, ent = memory.address(z, mem)
        return jnp.sum(z_mem**2) + jnp.sum(ent)

    return jax.grad(f, argnums=(0, 1))(z, mem)


def test_gradients_finite_when_all_but_one_shrunk_and_at_zero_z():
    mem = jnp.array([[5.0, 0, 0], [-5.0, 0, 0], [0, -5.0, 0], [0, 0, -5.0]])
    z = jnp.array([[10.0, 0, 0]])  # dot: one weight ~1, the others far below 1/4
    z_mem, w_hat, _ = memory.address(z, mem, "dot")
    assert int(jnp.sum(w_hat > 0)) == 1
    for g in jax.grad(lambda z, m: jnp.sum(memory.address(z, m, "dot")[0] ** 2), (0, 1))(z, mem):
        assert np.isfinite(np.asarray(g)).all()
    for g in _grads(jnp.zeros((2, 3)), mem):  # z = 0: cosine similarity is 0 everywhere
        assert np.isfinite(np.asarray(g)).all()


def test_fuse_with_open_forget_and_closed_input_returns_z():
    z = jnp.arange(6.0).reshape(2, 3)
    assert np.array_equal(memory.fuse(z, jnp.ones_like(z), jnp.zeros_like(z), z * 7), z)
    # The module itself with sigmoid gates saturated: f -> 1, i -> 0.
    frm = memory.FeatureRepair(gate="sigmoid")
    params = frm.init(jax.random.key(0), z, z)["params"]
    params = jax.tree.map(jnp.zeros_like, params)
    params["forget"]["bias"] = jnp.full((3,), 50.0)
    params["input"]["bias"] = jnp.full((3,), -50.0)
    np.testing.assert_allclose(frm.apply({"params": params}, z, -z), z, atol=1e-6)


def test_softmax_gate_is_a_distribution_over_features():
    frm = memory.FeatureRepair(gate="softmax")
    z = jnp.ones((2, 4))
    params = frm.init(jax.random.key(0), z, z)["params"]
    params = jax.tree.map(jnp.zeros_like, params)  # gates uniform 1/4, candidate tanh(0) = 0
    np.testing.assert_allclose(frm.apply({"params": params}, z * 8, z), z * 2, atol=1e-6)


def _capture(variant):
    m = model.CMAAE(variant=variant, memory_size=10, latent_dim=16)
    variables = model.init(m, jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3), minval=-1, maxval=1)
    (_, aux), state = m.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    return m, variables, x, aux, state["intermediates"]


def test_variants_route_as_specified():
    _, variables, x, aux, inter = _capture("mam")
    z_mem = inter["memory"]["__call__"][0][0]
    np.testing.assert_allclose(aux["z_out"], z_mem)
    _, variables, x, aux, inter = _capture("ae")
    assert "memory" not in variables["params"]
    np.testing.assert_allclose(aux["z_out"], aux["z"])
    assert float(jnp.sum(aux["entropy"])) == 0.0
    _, variables, x, aux, inter = _capture("cat")
    z_mem = inter["memory"]["__call__"][0][0]
    dense = variables["params"]["fusion"]
    cat = np.concatenate([aux["z"], z_mem], axis=1)
    np.testing.assert_allclose(aux["z_out"], cat @ dense["kernel"] + dense["bias"], atol=1e-4)
    _, variables, x, aux, inter = _capture("cmam")
    z_mem = np.asarray(inter["memory"]["__call__"][0][0])
    p = variables["params"]["repair"]
    c = np.concatenate([aux["z"], z_mem], axis=1)
    sm = lambda a: (
        np.exp(a - a.max(1, keepdims=True))
        / np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)
    )
    f = sm(c @ p["forget"]["kernel"] + p["forget"]["bias"])
    i = sm(c @ p["input"]["kernel"] + p["input"]["bias"])
    cand = np.tanh(c @ p["candidate"]["kernel"] + p["candidate"]["bias"])
    np.testing.assert_allclose(aux["z_out"], f * np.asarray(aux["z"]) + i * cand, atol=1e-5)


def test_unknown_variant_and_gate_are_rejected():
    with pytest.raises(ValueError, match="model.variant"):
        model.init(model.CMAAE(variant="lstm"), jax.random.key(0))
    with pytest.raises(ValueError, match="model.gate"):
        model.init(model.CMAAE(gate="relu", memory_size=4), jax.random.key(0))


@pytest.mark.parametrize("variant", model.VARIANTS)
def test_jit_and_eager_agree_and_outputs_finite(variant):
    m = model.CMAAE(variant=variant, memory_size=16)
    variables = model.init(m, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(3), (2, 64, 64, 3), minval=-1, maxval=1)

    def fwd(variables, x):
        (rec, aux), _ = m.apply(variables, x, train=True, mutable=["batch_stats"])
        return rec, aux["entropy"]

    eager = fwd(variables, x)
    jitted = jax.jit(fwd)(variables, x)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert np.isfinite(np.asarray(a)).all()
    assert np.abs(np.asarray(eager[0])).max() <= 1.0  # tanh output


def test_loss_is_weighted_l1_plus_mean_entropy():
    t = jnp.array([[1.0, -1.0], [0.5, 0.0]])
    r = jnp.array([[0.0, -1.0], [0.0, 1.0]])
    loss, parts = losses.total(t, r, jnp.array([0.2, 0.4]), 50.0, 0.01)
    # |diff| = 1, 0, 0.5, 1 -> mean 0.625; entropy mean 0.3
    np.testing.assert_allclose(parts["l1"], 0.625)
    np.testing.assert_allclose(loss, 50 * 0.625 + 0.01 * 0.3, rtol=1e-6)


def _layer1_by_loops(x_HxWx3, kernel_4x4x3x32, bias_32):
    """Encoder layer 1 by explicit loops: 4x4 kernel, stride 2, one pixel of zero padding,
    bias, leaky ReLU 0.2."""
    xp = np.pad(x_HxWx3, ((1, 1), (1, 1), (0, 0)))
    h, w = x_HxWx3.shape[0] // 2, x_HxWx3.shape[1] // 2
    out = np.zeros((h, w, kernel_4x4x3x32.shape[-1]))
    for i in range(h):
        for j in range(w):
            window = xp[2 * i : 2 * i + 4, 2 * j : 2 * j + 4, :]
            out[i, j] = np.tensordot(window, kernel_4x4x3x32, axes=3) + bias_32
    return np.where(out > 0, out, 0.2 * out)


def test_feature_residual_is_layer_ones_relative_error_and_trains_only_through_rec(cmam):
    net, variables = cmam
    params = variables["params"]
    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    rec = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    conv1 = {k: np.asarray(v, np.float64) for k, v in params["encoder"]["conv1"].items()}
    f_t = np.stack([_layer1_by_loops(x, conv1["kernel"], conv1["bias"]) for x in target])
    f_r = np.stack([_layer1_by_loops(x, conv1["kernel"], conv1["bias"]) for x in rec])
    expected = np.sum((f_t - f_r) ** 2) / np.sum(f_t**2)
    got = losses.feature_residual(net, params, jnp.asarray(target), jnp.asarray(rec))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)
    assert float(losses.feature_residual(net, params, target, target)) == 0.0
    # The layer is a fixed loss network: no gradient reaches any parameter through it ...
    g_params = jax.grad(lambda p: losses.feature_residual(net, p, target, rec))(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_params))
    # ... while the reconstruction gets one that lowers the term.
    g_rec = jax.grad(lambda r: losses.feature_residual(net, params, target, r))(jnp.asarray(rec))
    nudged = rec - 0.01 * g_rec / jnp.abs(g_rec).max()
    stepped = losses.feature_residual(net, params, target, nudged)
    assert float(stepped) < float(got)


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
    x = jax.random.uniform(jax.random.key(4), (2, 64, 64, 3), minval=-1, maxval=1)
    m32 = model.CMAAE(memory_size=16)
    variables = model.init(m32, jax.random.key(0))
    m16 = model.CMAAE(memory_size=16, dtype=jnp.bfloat16)
    assert jax.tree.all(
        jax.tree.map(lambda p: p.dtype == jnp.float32, model.init(m16, jax.random.key(0)))
    )
    r32, _ = m32.apply(variables, x)
    r16, _ = m16.apply(variables, x)
    assert r16.dtype == jnp.float32
    # stated tolerance of the mixed-precision option on a random-weight model
    assert float(jnp.max(jnp.abs(r32 - r16))) < 0.05


def test_code_statistics_by_hand():
    w_hat = jnp.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # 2 and 1 items used
    z = jnp.array([[3.0, 4.0], [0.0, 0.0]])  # mean square 25 / 4
    z_out = jnp.full((2, 2), 0.02)
    stats = model.code_statistics({"w_hat": w_hat, "z": z, "z_out": z_out})
    np.testing.assert_allclose(float(stats["items_used"]), 1.5)
    np.testing.assert_allclose(float(stats["z_rms"]), 2.5, rtol=1e-6)
    np.testing.assert_allclose(float(stats["z_out_rms"]), 0.02, rtol=1e-6)
    assert float(model.code_statistics({"w_hat": None, "z": z, "z_out": z})["items_used"]) == 0


def test_init_gives_the_variables_of_the_cpu_formulation():
    # model.init compiles the native convs; the matmul formulation must have the same tree.
    m = model.CMAAE(memory_size=10, latent_dim=16, impl="matmul")
    x = jnp.zeros((1, model.PATCH, model.PATCH, 3), jnp.float32)
    direct = m.init(jax.random.key(4), x, train=False)
    via_init = model.init(m, jax.random.key(4))
    assert jax.tree.structure(direct) == jax.tree.structure(via_init)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(via_init), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_windows_three_parts_compose_to_the_model():
    # scoring's chunked path: encoder layers 4-5, then encoder 6 + memory + repair + decoder 1,
    # then decoder layers 2-6, equal the model from encoder layer 3's output
    m = model.CMAAE(memory_size=16, impl="matmul")
    variables = model.init(m, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 64, 64, 3), minval=-1, maxval=1)
    h3 = m.apply(variables, x, False, 3, method=lambda mod, *a: mod.encoder(*a)[-1])
    want = m.apply(variables, h3, 3, method="reconstruct_from")[0]
    h5 = m.apply(variables, h3, 3, 5, method="encoded_between")
    assert h5.shape == (3, 4, 4, 256)
    d1 = m.apply(variables, h5, 5, method="decoder_input_from")
    assert d1.shape == (3, 4, 4, 256)
    got = m.apply(variables, d1, 1, method="decoded_from")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    d2 = m.apply(variables, h5, 5, 2, method="decoder_input_from")  # one layer more
    np.testing.assert_allclose(
        m.apply(variables, d2, 2, method="decoded_from"), want, rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError, match="eval mode"):
        z = jnp.zeros((3, 512))
        m.apply(variables, z, True, 0, 2, method=lambda mod, *a: mod.decoder(*a))
