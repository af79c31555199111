"""BatchNorm as statistics, and the conv that applies them by chunks (cmaae_jax/norm_act.py),
against flax's `nn.BatchNorm`, numpy, and the unfused lax computation with JAX's autodiff."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cmaae_jax import layers, model, norm_act


def _flax_then_act(train, slope):
    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            bn = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name="d"
            )
            y = bn(x)
            return jax.nn.leaky_relu(y, slope) if slope else jax.nn.relu(y)

    return Reference()


class _Ours(nn.Module):
    train: bool
    slope: float

    @nn.compact
    def __call__(self, x):
        stats = norm_act.BatchNorm(self.train, axis_name="d", name="BatchNorm_0")(x)
        return norm_act.affine_act(x, (*stats, self.slope))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("slope", [norm_act.RELU, norm_act.LEAKY])
def test_batch_norm_and_activation_equal_flax_and_numpy_over_two_shards(train, slope):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (2, 4, 5, 5, 3)).astype(np.float32)  # 2 shards of 4 images
    variables = {
        "params": {"BatchNorm_0": {"scale": rng.uniform(0.5, 2, 3), "bias": rng.normal(0, 1, 3)}},
        "batch_stats": {"BatchNorm_0": {"mean": rng.normal(0, 1, 3), "var": rng.uniform(1, 2, 3)}},
    }
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
    outs = []
    for module in (_flax_then_act(train, slope), _Ours(train, slope)):
        fn = lambda x, m=module: m.apply(variables, x, mutable=["batch_stats"])
        outs.append(jax.vmap(fn, axis_name="d")(x))
    (want, want_stats), (got, got_stats) = outs
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got_stats["batch_stats"]["BatchNorm_0"]["var"],
        want_stats["batch_stats"]["BatchNorm_0"]["var"],
        rtol=1e-6,
    )
    # by hand: statistics over both shards' images, the running averages with momentum 0.9
    ra = variables["batch_stats"]["BatchNorm_0"]
    mean, var = (x.mean((0, 1, 2, 3)), x.var((0, 1, 2, 3))) if train else (ra["mean"], ra["var"])
    p = variables["params"]["BatchNorm_0"]
    pre = (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]
    np.testing.assert_allclose(got, np.where(pre >= 0, pre, slope * pre), rtol=1e-4, atol=1e-4)
    new_mean = got_stats["batch_stats"]["BatchNorm_0"]["mean"][0]
    want_mean = 0.9 * ra["mean"] + 0.1 * x.mean((0, 1, 2, 3)) if train else ra["mean"]
    np.testing.assert_allclose(new_mean, want_mean, rtol=1e-5, atol=1e-6)


# (kernel, stride, padding, transpose, side, cin, cout): the kinds of the model's fused convs
KINDS = [
    (3, 1, 1, False, 16, 8, 8),  # encoder conv2
    (4, 2, 1, False, 16, 8, 16),  # encoder conv3, conv4
    (4, 2, 1, True, 8, 16, 8),  # decoder deconv3, deconv4, deconv6
    (3, 1, 1, True, 16, 8, 8),  # decoder deconv5
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("slope", [norm_act.RELU, norm_act.LEAKY])
def test_normalized_conv_equals_lax_forward_and_gradients_over_chunks(kind, slope):
    k, s, p, transpose, side, cin, cout = kind
    rng = np.random.default_rng(1)
    batch = 72  # more images than one chunk holds at these sides (conv_chunks.batch_chunk)
    x = jnp.asarray(rng.normal(0.5, 2.0, (batch, side, side, cin)), jnp.float32)
    mean = jnp.asarray(rng.normal(0, 1, cin), jnp.float32)
    mul = jnp.asarray(rng.uniform(0.3, 2, cin), jnp.float32)
    bias = jnp.asarray(rng.normal(0, 1, cin), jnp.float32).at[0].set(0.0)
    x = x.at[..., 0].set(mean[0])  # channel 0's pre-activation is exactly 0: its derivative
    w = jnp.asarray(rng.normal(0, 0.2, (k, k, cin, cout)), jnp.float32)
    op = layers.conv_transpose2d if transpose else layers.conv2d
    fused_op = functools.partial(op, stride=s, padding=p, impl="matmul")
    out_shape = jax.eval_shape(lambda: fused_op(x, w)).shape
    g = jnp.asarray(rng.normal(0, 1, out_shape), jnp.float32)
    g_moments = jnp.asarray(rng.normal(0, 1, (2, cout)), jnp.float32)

    def lax_loss(x, mean, mul, bias, w, with_moments):
        pre = (x - mean) * mul + bias
        h = jax.nn.leaky_relu(pre, slope) if slope else jax.nn.relu(pre)
        out = op(h, w, s, p, impl="xla")
        if not with_moments:
            return jnp.vdot(out, g)
        moments = jnp.stack([out.mean((0, 1, 2)), jnp.square(out).mean((0, 1, 2))])
        return jnp.vdot(out, g) + jnp.vdot(moments, g_moments)

    def fused_loss(x, mean, mul, bias, w, with_moments):
        out, moments = norm_act.normalized_conv(
            fused_op, slope, x, mean, mul, bias, w, with_moments
        )
        if not with_moments:
            assert moments is None
            return jnp.vdot(out, g)
        return jnp.vdot(out, g) + jnp.vdot(moments, g_moments)

    args = (x, mean, mul, bias, w)
    for with_moments in (True, False):  # without: no moments taken, none of their gradient
        grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=range(5)), static_argnums=5)
        want = grad(lax_loss)(*args, with_moments)
        got = grad(fused_loss)(*args, with_moments)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        names = ("x", "mean", "mul", "bias", "kernel")
        for name, a, b in zip(names, got[1], want[1], strict=True):
            scale = float(jnp.max(jnp.abs(b)))
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=name)


def test_training_step_in_float64_equals_the_lax_layers():
    """The CPU formulation in training (each BatchNorm and activation inside the next conv's
    chunks, conv1's bias in conv2's, weight gradients as convs over the batch, sub-pixel transposed
    convs) run in float64 against the native lax layers: loss, reconstruction, BatchNorm
    statistics and every gradient. In float64 the two must agree to ~1e-12: in float32
    rounding reaches ~1e-2 of some gradients' scale at initialisation in every form, the lax
    layers' included, because the BatchNorm variances' backward (E[x^2] - E[x]^2) nearly
    cancels (BENCHMARKS.md, forty-first session), so float32 tells apart only orders of
    summation, not formulations."""
    rng = np.random.default_rng(2)
    x = np.asarray(rng.uniform(-1, 1, (4, 64, 64, 3)), np.float64)  # several chunks a layer
    variables = model.init(model.CMAAE(memory_size=16), jax.random.key(0))

    def step(impl="matmul"):
        net = model.CMAAE(memory_size=16, impl=impl, dtype=jnp.float64)
        params, stats = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64), (variables["params"], variables["batch_stats"])
        )

        def loss(params):
            (rec, aux), new_stats = net.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(jnp.square(rec - x)) + jnp.mean(aux["entropy"]), (rec, new_stats)

        out = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        assert jax.tree.leaves(out)[0].dtype == jnp.float64
        return jax.tree.map(np.asarray, out)

    with jax.enable_x64(True):
        got, want = step(), step("xla")
    # every value within 1e-10 of its leaf's largest magnitude
    flat = jax.tree_util.tree_flatten_with_path(got)[0]
    for (path, a), b in zip(flat, jax.tree.leaves(want), strict=True):
        scale = max(float(np.max(np.abs(b))), 1e-30)
        np.testing.assert_allclose(
            a, b, rtol=0, atol=1e-10 * scale, err_msg=jax.tree_util.keystr(path)
        )
