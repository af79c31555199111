"""The im2col / sub-pixel convolutions equal PyTorch-convention convs, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import conv_chunks, layers


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


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])  # even: sub-pixel input gradient
def test_fast_conv_gradients_equal_lax(hw):
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (2, *hw, 3))
    w = jax.random.normal(kw, (4, 4, 3, 5))

    def grads(impl):
        loss = lambda x, w: jnp.sum(jnp.sin(layers.conv2d(x, w, 2, 1, impl=impl)))
        return jax.grad(loss, argnums=(0, 1))(x, w)

    for a, b in zip(grads("matmul"), grads("xla"), strict=True):
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


def brute_weight_grad(x, g, k, s, p):
    """d/dW of sum(conv2d(x, W) * g) by explicit loops: dW[ky, kx] = sum over the output
    positions (i, j) of xpad[:, s*i + ky, s*j + kx]^T @ g[:, i, j]."""
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = g.shape[1:3]
    dw = np.zeros((k, k, x.shape[-1], g.shape[-1]))
    for ky in range(k):
        for kx in range(k):
            for i in range(oh):
                for j in range(ow):
                    dw[ky, kx] += xp[:, s * i + ky, s * j + kx].T @ g[:, i, j]
    return dw


@pytest.mark.parametrize(
    "shape,k,s,p,cout",
    [
        ((2, 8, 8, 3), 4, 2, 1, 5),
        ((2, 7, 9, 4), 4, 2, 1, 3),  # odd sides: the conv's output holds a row / column more
        ((2, 6, 10, 4), 3, 1, 1, 3),
        ((3, 4, 4, 2), 4, 1, 0, 3),  # a window as large as the input: one output position
        ((2, 9, 7, 5), 3, 2, 1, 4),  # an odd kernel with stride 2
        ((2, 9, 7, 4), 5, 1, 2, 4),  # a 5x5 kernel
        ((1, 8, 8, 6), 4, 2, 1, 7),  # one image: the conv's channels are 1
    ],
)
def test_weight_gradient_equals_brute_force(shape, k, s, p, cout):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    oh, ow = ((n + 2 * p - k) // s + 1 for n in shape[1:3])
    g = rng.standard_normal((shape[0], oh, ow, cout)).astype(np.float32)
    got = conv_chunks.conv_weight_grad(jnp.asarray(x), jnp.asarray(g), k, s, p)
    np.testing.assert_allclose(got, brute_weight_grad(x, g, k, s, p), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,s,p", CASES + [(4, 2, 0)])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])  # odd sides: stride 2 pads one more row
def test_im2col_conv_matches_brute_force(k, s, p, hw):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    w = rng.standard_normal((k, k, 3, 5)).astype(np.float32)
    got = conv_chunks.im2col_conv(jnp.asarray(x), jnp.asarray(w), s, p)
    np.testing.assert_allclose(got, brute_conv(x, w, s, p), rtol=1e-5, atol=1e-4)


def test_batch_chunk_is_the_largest_divisor_that_fits(monkeypatch):
    monkeypatch.setattr(conv_chunks, "CHUNK_ROWS", 4096)  # the default, read at each call
    assert conv_chunks.batch_chunk(256, 1156) == 2  # 3x3 layer, 34x34 padded grid: 3 fit, 2 divides
    assert conv_chunks.batch_chunk(256, 25) == 128  # 5x5 grid: 163 fit, 128 the largest divisor
    assert conv_chunks.batch_chunk(256, 16) == 256  # 4x4 grid: the whole batch fits
    assert conv_chunks.batch_chunk(256, 1156, chunk_rows=2048) == 1  # 1 fits
    assert conv_chunks.batch_chunk(6, 100, chunk_rows=450) == 3  # 4 fit; 3 is the divisor
    assert conv_chunks.batch_chunk(7, 100, chunk_rows=450) == 1  # prime batch: one image a chunk
    assert conv_chunks.batch_chunk(4, 10_000, chunk_rows=450) == 1  # an image larger than a chunk


def _fake_sysfs(root, caches):
    for i, (level, kind, size) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(f"{text}\n")
    return str(root)


def test_chunk_rows_fill_the_level_2_cache(tmp_path):
    # Linux's sysfs: L1 data and instruction caches, then L2, then the shared L3
    amd = [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "512K")]
    amd.append(("3", "Unified", "32768K"))
    assert conv_chunks.l2_cache_bytes(_fake_sysfs(tmp_path / "a", amd)) == 512 * 1024
    intel = [("1", "Data", "48K"), ("2", "Unified", "2M")]
    assert conv_chunks.l2_cache_bytes(_fake_sysfs(tmp_path / "b", intel)) == 2 * 1024 * 1024
    assert conv_chunks.l2_cache_bytes(str(tmp_path / "missing")) is None
    # 256 bytes a pixel (a 32-channel layer's input and output, float32) fill it:
    # 512 KB -> 2048, 1 MB -> 4096, 2 MB -> 8192; powers of two within [1024, 16384]
    assert conv_chunks.chunk_rows_for(512 * 1024) == 2048
    assert conv_chunks.chunk_rows_for(1024 * 1024) == 4096
    assert conv_chunks.chunk_rows_for(1024 * 1024 + 5) == 4096
    assert conv_chunks.chunk_rows_for(2 * 1024 * 1024) == 8192
    assert conv_chunks.chunk_rows_for(1280 * 1024) == 4096  # 5120 rows would fit: not a power
    assert conv_chunks.chunk_rows_for(64 * 1024) == 1024
    assert conv_chunks.chunk_rows_for(64 * 1024 * 1024) == 16384
    assert conv_chunks.chunk_rows_for(None) == 4096


def test_weight_grad_chunks_hold_at_most_weight_grad_elements_of_g():
    assert conv_chunks.WEIGHT_GRAD_ELEMENTS == 2**17
    # 131072 elements: 4 images of 32x32x32, 8 of 16x16x64, 32 of 4x4x256 (2^17 / 4096)
    assert conv_chunks.weight_grad_chunk((256, 32, 32, 32)) == 4
    assert conv_chunks.weight_grad_chunk((256, 16, 16, 64)) == 8
    assert conv_chunks.weight_grad_chunk((256, 4, 4, 256)) == 32
    assert conv_chunks.weight_grad_chunk((24, 4, 4, 256)) == 24  # the whole batch fits
    assert conv_chunks.weight_grad_chunk((40, 4, 4, 256)) == 20  # 32 fit, 20 divides 40
    assert conv_chunks.weight_grad_chunk((4, 64, 64, 64)) == 1  # one image is more


@pytest.mark.parametrize(
    "shape,k,s,p,cout,chunk",
    [
        ((6, 8, 8, 3), 3, 1, 1, 4, 2),  # three chunks of 2 images
        ((6, 8, 8, 3), 3, 1, 1, 4, 3),
        ((4, 8, 8, 2), 4, 2, 1, 5, 2),
        ((5, 7, 9, 4), 4, 2, 1, 3, 1),  # odd sides, one image a chunk
        ((6, 8, 8, 3), 3, 1, 1, 4, None),  # the default: the whole batch
    ],
)
def test_chunked_weight_gradient_equals_lax(shape, k, s, p, cout, chunk):
    kx, kw, kg = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, shape[-1], cout))
    out, vjp = jax.vjp(lambda w: layers.conv2d(x, w, s, p, impl="xla"), w)
    g = jax.random.normal(kg, out.shape)
    got = jax.jit(lambda x, g: conv_chunks.chunked_weight_grad(x, g, k, s, p, chunk))(x, g)
    np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-5, atol=1e-4)


def test_chunked_forward_conv_equals_lax(monkeypatch):
    # 6 images of 32x32 px: 1024 input pixels each, 4 fit in 4096 rows: two chunks of 3
    monkeypatch.setattr(conv_chunks, "CHUNK_ROWS", 4096)
    assert conv_chunks.batch_chunk(6, 32 * 32) == 3
    kx, kw = jax.random.split(jax.random.key(6))
    x = jax.random.normal(kx, (6, 32, 32, 3))
    w = jax.random.normal(kw, (4, 4, 3, 5))
    got = jax.jit(lambda x, w: layers._chunked_conv(x, w, 2, 1))(x, w)
    want = layers.conv2d(x, w, 2, 1, impl="xla")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s,p,transpose", [(3, 1, 1, False), (4, 2, 1, False), (4, 2, 1, True)])
def test_chunked_layers_equal_lax_with_gradients(k, s, p, transpose):
    # 4 images of 64x64 (4096 pixels: one image a chunk): forward, input and weight gradients
    # by chunks against lax; the transposed conv from 32x32 (1024 pixels: one chunk of 4
    # forward, its 64x64 gradient one image a chunk)
    side = 32 if transpose else 64
    kx, kw, kg = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(kx, (4, side, side, 3))
    w = jax.random.normal(kw, (k, k, 3, 4)) * 0.1
    op = layers.conv_transpose2d if transpose else layers.conv2d
    out, vjp = jax.vjp(lambda x, w: op(x, w, s, p, impl="matmul"), x, w)
    want, vjp_lax = jax.vjp(lambda x, w: op(x, w, s, p, impl="xla"), x, w)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, out.shape)
    for got, ref in zip(vjp(g), vjp_lax(g), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


# (3, 32) as the model's first encoder and last decoder layers.
@pytest.mark.parametrize("hw,cin,cout", [(8, 6, 8), (16, 6, 8), (16, 3, 32)])
def test_fast_conv_forward_and_gradients_equal_lax_at_training_sizes(hw, cin, cout):
    kx, kw, kg = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (2, hw, hw, cin))
    w = jax.random.normal(kw, (4, 4, cin, cout))
    g = jax.random.normal(kg, (2, hw // 2, hw // 2, cout))
    loss = lambda impl: lambda x, w: jnp.sum(layers.conv2d(x, w, 2, 1, impl=impl) * g)
    fast = jax.value_and_grad(loss("matmul"), argnums=(0, 1))(x, w)
    ref = jax.value_and_grad(loss("xla"), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5, atol=1e-3)
    for a, b in zip(fast[1], ref[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
    # the transposed conv, whose weight gradient is the same sum with x and g exchanged
    xt = jax.random.normal(kx, (2, hw // 2, hw // 2, cout))
    wt = jax.random.normal(kw, (4, 4, cout, cin))
    gt = jax.random.normal(kg, (2, hw, hw, cin))
    loss_t = lambda f: lambda x, w: jnp.sum(f(x, w, 2, 1) * gt)
    fast = jax.grad(loss_t(layers.conv_transpose2d), argnums=(0, 1))(xt, wt)
    ref = jax.grad(loss_t(_lax_reference), argnums=(0, 1))(xt, wt)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("transpose", [False, True])
def test_inference_by_chunks_matches_brute_force(monkeypatch, transpose):
    # thresholds lowered so that 7 images of 6x6 run as two chunks of 3 and a remainder of 1
    monkeypatch.setattr(conv_chunks, "INFER_WHOLE_ROWS", 100)
    monkeypatch.setattr(conv_chunks, "INFER_CHUNK_ROWS", 3 * 36)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 6, 6, 4)).astype(np.float32)
    w = rng.normal(size=(4, 4, 4, 5)).astype(np.float32)
    op = layers.conv_transpose2d if transpose else layers.conv2d
    fn = jax.jit(lambda x, w: op(x, w, 2, 1, impl="matmul"))
    jaxpr = str(jax.make_jaxpr(fn)(x, w))
    assert "scan" in jaxpr  # the chunks' loop (lax.map)
    want = (brute_conv_transpose if transpose else brute_conv)(x, w, 2, 1)
    np.testing.assert_allclose(np.asarray(fn(x, w)), want, atol=1e-4)
    x_small = x[:2]  # 72 rows: whole
    assert "scan" not in str(jax.make_jaxpr(fn)(x_small, w))
