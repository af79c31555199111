"""spread.py: row bands by hand; encoder passes split by rows equal the whole-image ones."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from cmaae_jax import model, msfr, spread


@pytest.fixture(scope="module")
def net():
    m = model.CMAAE(memory_size=16, impl="xla")
    variables = jax.jit(lambda key: model.init(m, key))(jax.random.key(0, impl="unsafe_rbg"))
    return m, variables


def _pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)) for _ in (0, 1)]


def test_row_bands_by_hand():
    # two devices: each band plus the margin on its inner side
    assert spread.row_bands(512, 2, 16, 8) == (272, [0, 240])
    assert spread.row_bands(512, 2, 8, 4) == (264, [0, 248])
    # four: inner bands read the margin on both sides, edge slabs shifted inwards
    assert spread.row_bands(128, 4, 16, 8) == (64, [0, 16, 48, 64])
    assert spread.row_bands(64, 4, 16, 8) == (48, [0, 0, 16, 16])
    assert spread.row_bands(40, 2, 16, 8) is None  # a band of 20 rows is not a multiple of 8
    assert spread.row_bands(32, 4, 16, 8) is None  # 8 + 32 rows per slab exceed the image
    assert spread.row_bands(64, 3, 16, 8) is None  # 64 rows do not split in three


def _residuals(m, variables, images, rec, mesh, margin=msfr.ROW_MARGIN):
    fn = lambda v, a, b: msfr.feature_residuals(m, v, a, b, 3, mesh)  # noqa: E731
    old, msfr.ROW_MARGIN = msfr.ROW_MARGIN, margin
    try:  # compiled once: its values and its HLO
        compiled = jax.jit(fn).lower(variables, images, rec).compile()
    finally:
        msfr.ROW_MARGIN = old
    return compiled(variables, images, rec), compiled.as_text()


@pytest.mark.parametrize("h", [128, 192])
def test_residuals_split_by_rows_equal_the_whole_image(net, h):
    m, variables = net
    images, rec = _pair(h, 64, seed=h)
    want = _residuals(m, variables, images, rec, None)[0]
    mesh = spread.local_mesh()
    assert mesh.size == 4
    got, hlo = _residuals(m, variables, images, rec, mesh)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.max(w)))
    # each device's convolutions see one slab of rows (layer 1 at stride 2), never the image
    length, _ = spread.row_bands(h, 4, msfr.ROW_MARGIN, 4)
    rows = {int(r) for r in re.findall(r"= f32\[1,(\d+),32,32\]\S* convolution\(", hlo)}
    assert rows == {length // 2}, rows
    # a margin too small for layer 3's reach (8 px) gives other values at the cuts
    short = _residuals(m, variables, images, rec, mesh, margin=4)[0]
    assert not np.allclose(short[2], want[2], rtol=1e-5, atol=1e-6 * float(jnp.max(want[2])))
    for s in (0, 1):  # layers 1 and 2 reach 2 and 4 px past a cut: 4 is enough for them
        tol = 1e-6 * float(jnp.max(want[s]))
        np.testing.assert_allclose(short[s], want[s], rtol=1e-5, atol=tol)


def test_rows_that_do_not_split_fall_back_to_images_on_devices(net):
    m, variables = net
    images, rec = _pair(64, 64, seed=5)
    want = _residuals(m, variables, images, rec, None)[0]
    mesh = Mesh(np.asarray(jax.local_devices()[:3]), (spread.AXIS,))  # 64 rows, 3 devices
    got = _residuals(m, variables, images, rec, mesh)[0]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.max(w)))


def test_split_rows_cuts_slabs_on_the_devices(net):
    # Each device cuts its slab of the whole input itself: the compiled function gathers
    # the input at most once and exchanges no slabs (XLA had cut them outside the devices
    # with an all-to-all and collective-permutes of most of the rows).
    m, variables = net
    image = _pair(128, 64, seed=3)[0]
    mesh = spread.local_mesh()

    def encode(v, x):
        return m.apply(v, x, 3, method="features")

    split = jax.jit(lambda v, x: spread.split_rows(mesh, encode, v, x, msfr.ROW_MARGIN, 4))
    compiled = split.lower(variables, image).compile()
    hlo = compiled.as_text()
    assert "all-to-all" not in hlo and "collective-permute" not in hlo
    for g, w in zip(compiled(variables, image), encode(variables, image), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(w))))
