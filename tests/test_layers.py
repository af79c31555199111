"""The im2col / sub-pixel convolutions equal PyTorch-convention convs, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import layers


def brute_conv(x, w, s, p):
    """Cross-correlation by explicit loops (PyTorch Conv2d), NHWC / HWIO."""
    b, h, wd, _ = x.shape
    k, cout = w.shape[0], w.shape[-1]
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    out = np.zeros((b, oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            for ky in range(k):
                for kx in range(k):
                    out[:, i, j] += xp[:, i * s + ky, j * s + kx] @ w[ky, kx]
    return out


def brute_conv_transpose(x, w, s, p):
    """Scatter definition of PyTorch ConvTranspose2d: out[s*i - p + k] += x[i] @ W[k]."""
    b, h, wd, _ = x.shape
    k, cout = w.shape[0], w.shape[-1]
    oh, ow = (h - 1) * s - 2 * p + k, (wd - 1) * s - 2 * p + k
    out = np.zeros((b, oh, ow, cout))
    for i in range(h):
        for j in range(wd):
            for ky in range(k):
                for kx in range(k):
                    oy, ox = i * s - p + ky, j * s - p + kx
                    if 0 <= oy < oh and 0 <= ox < ow:
                        out[:, oy, ox] += x[:, i, j] @ w[ky, kx]
    return out


CASES = [(4, 2, 1), (3, 1, 1), (4, 1, 0)]


@pytest.mark.parametrize("k,s,p", CASES)
def test_conv_matches_brute_force_and_lax(k, s, p):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
    w = rng.normal(size=(k, k, 3, 5)).astype(np.float32)
    ours = np.asarray(layers.conv2d(jnp.asarray(x), jnp.asarray(w), s, p))
    np.testing.assert_allclose(ours, brute_conv(x, w, s, p), atol=1e-4)
    ref = jax.lax.conv_general_dilated(
        x, w, (s, s), [(p, p)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-4)


@pytest.mark.parametrize("k,s,p", CASES + [(4, 2, 1)])
def test_conv_transpose_matches_brute_force(k, s, p):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
    w = rng.normal(size=(k, k, 4, 3)).astype(np.float32)
    ours = np.asarray(layers.conv_transpose2d(jnp.asarray(x), jnp.asarray(w), s, p))
    np.testing.assert_allclose(ours, brute_conv_transpose(x, w, s, p), atol=1e-4)


def _lax_reference(x, w, s, p):
    # The native XLA transposed convolution, PyTorch semantics: flipped kernel, padding k-1-p.
    k = w.shape[0]
    return jax.lax.conv_transpose(
        x,
        w[::-1, ::-1],
        (s, s),
        [(k - 1 - p, k - 1 - p)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@pytest.mark.parametrize(
    "k,s,p,cin,cout,hw", [(4, 2, 1, 8, 6, 4), (4, 1, 0, 16, 8, 1), (3, 1, 1, 4, 4, 6)]
)
def test_fast_conv_transpose_equals_lax_forward_and_gradients(k, s, p, cin, cout, hw):
    kx, kw, kg = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (3, hw, hw, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    out_shape = _lax_reference(x, w, s, p).shape
    g = jax.random.normal(kg, out_shape)  # random cotangent: tests the full VJP
    loss = lambda f: lambda x, w: jnp.sum(f(x, w, s, p) * g)
    fast = jax.value_and_grad(loss(layers.conv_transpose2d), argnums=(0, 1))(x, w)
    ref = jax.value_and_grad(loss(_lax_reference), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(fast[1][0], ref[1][0], rtol=1e-5, atol=1e-4)  # input grad
    np.testing.assert_allclose(fast[1][1], ref[1][1], rtol=1e-5, atol=1e-4)  # weight grad


def test_fast_conv_gradients_equal_lax():
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (2, 8, 8, 3))
    w = jax.random.normal(kw, (4, 4, 3, 5))
    for impl in ("matmul", "xla"):
        loss = lambda x, w, impl=impl: jnp.sum(jnp.sin(layers.conv2d(x, w, 2, 1, impl=impl)))
        if impl == "matmul":
            fast = jax.grad(loss, argnums=(0, 1))(x, w)
        else:
            ref = jax.grad(loss, argnums=(0, 1))(x, w)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_module_init_matches_pytorch_default_bounds():
    conv = layers.Conv(7, 4, 2, 1, use_bias=True)
    params = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    bound = 1 / np.sqrt(3 * 4 * 4)
    assert params["kernel"].shape == (4, 4, 3, 7)
    assert np.abs(params["kernel"]).max() <= bound
    assert np.abs(params["kernel"]).max() > 0.8 * bound  # uniform, not a much narrower law
    tconv = layers.Conv(7, 4, 2, 1, use_bias=False, transpose=True)
    params = tconv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
    assert set(params) == {"kernel"}
    assert np.abs(params["kernel"]).max() <= 1 / np.sqrt(7 * 4 * 4)
