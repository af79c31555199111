"""window_features.py: the frames by a brute-force walk over the receptive fields; windows'
layers cut from their images' maps equal the encoder run on each window; the reconstruction
and the map with the cut equal those without, on one device and spread over four."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmaae_jax import model, msfr, patches, scoring, spread, window_features

H, W = 128, 192


@pytest.fixture(scope="module")
def net():
    m = model.CMAAE(memory_size=16, impl="matmul")
    variables = jax.jit(lambda key: model.init(m, key))(jax.random.key(0, impl="unsafe_rbg"))
    # BatchNorm statistics away from the (0, 1) they start at
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    moved = [x + 0.3 * jnp.abs(jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]  # noqa: B905
    return m, {**variables, "batch_stats": jax.tree.unflatten(tree, moved)}


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, size=(n, H, W, 3)).astype(np.float32))


def test_interiors_are_the_positions_that_read_no_padding():
    valid, want = np.ones(64, bool), []  # the window's pixels; beyond them, padding
    for _, k, s, p, _, _ in model.ENCODER[:3]:
        n = (len(valid) + 2 * p - k) // s + 1
        reads = [[s * r - p + j for j in range(k)] for r in range(n)]
        valid = np.array([all(0 <= i < len(valid) and valid[i] for i in row) for row in reads])
        rows = np.flatnonzero(valid)
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))  # one run
        want.append((int(rows[0]), int(rows[-1]) + 1))
    assert want == [(1, 31), (2, 30), (2, 14)]
    assert window_features.interiors(3) == want
    assert window_features.strides(3) == [2, 2, 4]


_features = jax.jit(lambda m, v, x, n: m.apply(v, x, n, method="features"), static_argnums=(0, 3))


@pytest.mark.parametrize("stride", [64, 32, 16])
def test_cut_layers_equal_the_encoder_on_each_window(net, stride):
    m, variables = net
    images = _images(2, seed=stride)
    windows = patches.to_windows(images, 64, stride)
    features = _features(m, variables, images, 3)
    want = _features(m, variables, windows, 3)
    for n in (1, 2, 3):
        cuts = window_features.cut_windows(features, n, stride, 0, len(windows))
        got = jax.jit(window_features.window_maps)(variables, windows, cuts)
        scale = float(jnp.max(jnp.abs(want[n - 1])))
        np.testing.assert_allclose(got, want[n - 1], rtol=0, atol=2e-6 * scale)
        # the image's map is the window's inside the interior and not on its frame
        lo, hi = window_features.interiors(n)[-1]
        f = window_features.strides(n)[-1]
        image_part = np.asarray(patches.to_windows(features[n - 1], 64 // f, stride // f))
        exact = np.asarray(want[n - 1])
        inner = (slice(None), slice(lo, hi), slice(lo, hi))
        np.testing.assert_allclose(cuts[-1], exact[inner], rtol=0, atol=2e-6 * scale)
        np.testing.assert_allclose(image_part[inner], exact[inner], rtol=0, atol=2e-6 * scale)
        frame = np.abs(image_part - exact)
        frame[inner] = 0
        for side in (frame[:, :lo], frame[:, hi:], frame[:, :, :lo], frame[:, :, hi:]):
            assert side.max() > 1e-2 * scale


def test_cuts_of_a_range_of_windows_are_those_windows_cuts(net):
    m, variables = net
    features = _features(m, variables, _images(2, seed=3), 3)
    whole = window_features.cut_windows(features, 3, 32, 0, 30)  # 2 x 3 x 5 windows
    part = jax.jit(window_features.cut_windows, static_argnums=(1, 2, 4))(features, 3, 32, 11, 7)
    for w, p in zip(whole, part, strict=True):
        np.testing.assert_array_equal(p, w[11:18])


_reconstruct = jax.jit(scoring.reconstruct, static_argnums=(0, 3, 4))
_image_features = jax.jit(msfr.image_features, static_argnums=(0, 3, 4))


@pytest.mark.parametrize("n_images,stride", [(1, 64), (2, 32)])
def test_reconstruction_from_cut_layers_equals_the_model_on_each_window(net, n_images, stride):
    m, variables = net
    images = _images(n_images, seed=n_images)
    want = _reconstruct(m, variables, images, stride, None)
    for mesh in (None, spread.local_mesh()):
        features = _image_features(m, variables, images, 3, mesh)
        got = _reconstruct(m, variables, images, stride, mesh, features)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_overlapping_windows_by_chunks_equal_the_model_on_each_window(net, monkeypatch):
    # 30 windows (2 images, stride 32): on one device 10 encoder chunks of 3 and 6 decoder
    # chunks of 5; on four devices 8 windows each (2 of them padding), 3 and 2 chunks, the
    # last ones ragged; the windows' first layers cut from the images' features or not
    m, variables = net
    monkeypatch.setattr(scoring, "ENCODE_CHUNK", 3)
    monkeypatch.setattr(scoring, "DECODE_CHUNK", 5)
    images = _images(2, seed=5)
    windows = patches.to_windows(images, 64, 32)
    want = patches.from_windows(m.apply(variables, windows, train=False)[0], 2, H, W, 32)
    for mesh in (None, spread.local_mesh()):
        for features in (_image_features(m, variables, images, 3, mesh), None):
            fn = jax.jit(lambda v, x, f, mesh=mesh: scoring.reconstruct(m, v, x, 32, mesh, f))
            compiled = fn.lower(variables, images, features).compile()
            np.testing.assert_allclose(compiled(variables, images, features), want, atol=1e-5)
            text = compiled.as_text()  # encoder layer 4 of 3 windows, decoder layer 5 of 5
            assert re.search(r"= f32\[3,8,8,128\]\S* convolution\(", text), "no encoder chunk"
            assert re.search(r"= f32\[5,32,32,32\]\S* convolution\(", text), "no decoder chunk"


def test_image_features_split_by_images_where_they_divide(net):
    m, variables = net
    mesh = spread.local_mesh()
    assert mesh.size == 4
    for n_images, rows in ((4, H // 2), (1, None)):
        images = _images(n_images, seed=7)
        fn = jax.jit(lambda v, x: msfr.image_features(m, v, x, 3, mesh))  # noqa: B023
        compiled = fn.lower(variables, images).compile()
        got = compiled(variables, images)
        want = _features(m, variables, images, 3)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(w))))
        # layer 2's convolutions: one whole image a device, or (one image) a band of rows
        shapes = re.findall(r"= f32\[(\d+),(\d+),(\d+),32\]\S* convolution\(", compiled.as_text())
        assert shapes, "no layer-2 convolution found"
        for b, h, w in {tuple(map(int, s)) for s in shapes}:
            assert (b, w) == (1, W // 2)
            assert h == rows if rows else h < H // 2
