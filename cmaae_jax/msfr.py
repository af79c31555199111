"""The multi-scale feature residual map (MSFR, eq. 14) of images against their reconstructions.

Encoder layers 1..max(scales) run on whole images and on their reconstructions (the encoder is
fully convolutional); per scale s, r_s = mean over channels of (F_s - F'_s)^2, resized
bilinearly to H x W exactly as PyTorch's `F.interpolate(mode="bilinear",
align_corners=False)` does (`resize_bilinear`); the map is sum_s a_s r_s / sum_s a_s with
a_s = `score_options.RF_AREAS[s]`, the receptive-field area of layer s. With a mesh the
encoder passes are split over its devices (`image_features`). `scoring` reconstructs the
images and calls `msfr_map`; the images' features it computes once serve the windows' first
layers too (`window_features`).
"""

import chex
import jax
import jax.numpy as jnp

from cmaae_jax import score_options, window_features
from cmaae_jax import spread as spread_lib

Array = jax.Array

# Input rows beyond a band that encoder layers 1..3 read (`spread_lib.split_rows`): the last
# two rows of layer 3 (4 px apart) before a cut see its zero padding through layers 1-2.
ROW_MARGIN = 8


def resize_bilinear(maps_Bxhxw: Array, h: int, w: int) -> Array:
    """Bilinear resize of [B,h,w] maps to [B,H,W], PyTorch `align_corners=False` semantics.

    Half-pixel centres (source coordinate (i + 0.5) * in / out - 0.5), clamped at the border.
    An integer upscale (H = f*h, W = g*w: the MSFR map's levels) is two passes of two taps
    each (`_upsample_axis`); any other size goes through `jax.image.resize`, whose dense
    interpolation matrices cost ~1 ms of matmul per 512x512 level (BENCHMARKS.md,
    forty-first session). With `antialias=False` its triangle kernel is exactly linear
    interpolation between the two nearest source samples, renormalised at the border, which
    equals PyTorch's clamping (downsampling stays like PyTorch's too).
    """
    b, in_h, in_w = maps_Bxhxw.shape
    if h % in_h == 0 and w % in_w == 0:
        return _upsample_axis(_upsample_axis(maps_Bxhxw, h // in_h, 1), w // in_w, 2)
    return jax.image.resize(maps_Bxhxw, (b, h, w), "bilinear", antialias=False)


def _upsample_axis(x: Array, factor: int, axis: int) -> Array:
    """`factor` times as many samples along `axis`: output f*i + r lies at input coordinate
    i + d, d = (r + 0.5) / f - 0.5 in (-1/2, 1/2), between input i and its neighbour on
    d's side, weights 1 - |d| and |d|; the edge sample repeated beyond the border."""
    if factor == 1:
        return x
    n = x.shape[axis]
    first, last = (jax.lax.slice_in_dim(x, i, i + 1, axis=axis) for i in (0, n - 1))
    before = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    after = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
    parts = []  # the edges by concatenation, not jnp.pad(mode="edge"): ONNX export takes it
    for r in range(factor):
        d = (r + 0.5) / factor - 0.5
        parts.append((1.0 - abs(d)) * x + abs(d) * (after if d > 0 else before))
    shape = list(x.shape)
    shape[axis] = n * factor
    return jnp.stack(parts, axis=axis + 1).reshape(shape)


def _residual(f_BxhxwxC: Array, f_rec_BxhxwxC: Array) -> Array:
    """mean_c (F - F')^2 in float32: [B,h,w]."""
    diff = f_BxhxwxC.astype(jnp.float32) - f_rec_BxhxwxC.astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=-1)


def image_features(model, variables, images_BxHxWx3: Array, num_layers: int, mesh=None):
    """Encoder layers 1..num_layers of whole images (eval mode). With a `mesh`, each device
    encodes a share of the images where they divide evenly (as it takes those images'
    windows in `scoring.reconstruct`: nothing crosses devices), else a band of rows of each
    (`spread_lib.split_rows`) where the rows split."""

    def encode(v, x_BxHxWx3):
        return model.apply(v, x_BxHxWx3, num_layers, method="features")

    if mesh is None:
        return encode(variables, images_BxHxWx3)
    factor = window_features.strides(num_layers)[-1]
    b, h = images_BxHxWx3.shape[:2]
    if b % mesh.size and spread_lib.row_bands(h, mesh.size, ROW_MARGIN, factor):
        return spread_lib.split_rows(mesh, encode, variables, images_BxHxWx3, ROW_MARGIN, factor)
    return spread_lib.split_batch(mesh, encode, variables, images_BxHxWx3)


def feature_residuals(
    model, variables, images_BxHxWx3: Array, rec_BxHxWx3: Array, num_layers, mesh=None,
    features=None,
):  # fmt: skip
    """Per-layer r_s = mean_c (F_s - F'_s)^2 at feature resolution, s = 1..num_layers
    (`features`: the images' own, where already computed; `mesh`: see `image_features`)."""
    if features is None:
        features = image_features(model, variables, images_BxHxWx3, num_layers, mesh)
    rec_features = image_features(model, variables, rec_BxHxWx3, num_layers, mesh)
    return [_residual(*fs) for fs in zip(features[:num_layers], rec_features, strict=True)]


def msfr_map(
    model, variables, images_BxHxWx3: Array, rec_BxHxWx3: Array, scales=(1, 2, 3), mesh=None,
    features=None,
):  # fmt: skip
    """Multi-scale feature residual map [B,H,W] (eq. 14) of images against reconstructions
    (`mesh`, `features`: see `feature_residuals`)."""
    scales = score_options.check_scales(scales)
    b, h, w, _ = images_BxHxWx3.shape
    chex.assert_shape([images_BxHxWx3, rec_BxHxWx3], (b, h, w, 3))
    residuals = feature_residuals(
        model, variables, images_BxHxWx3, rec_BxHxWx3, max(scales), mesh, features
    )
    total = float(sum(score_options.RF_AREAS[s] for s in scales))
    by_size = {}  # the levels of one resolution summed before their one resize (it is linear)
    for s in scales:
        weighted = (score_options.RF_AREAS[s] / total) * residuals[s - 1]
        size = weighted.shape[1:]
        by_size[size] = by_size[size] + weighted if size in by_size else weighted
    amap = jnp.zeros((b, h, w), jnp.float32)
    for level_sum in by_size.values():
        amap = amap + resize_bilinear(level_sum, h, w)
    return amap
