"""The encoder's first layers of windows, cut from their images' own feature maps.

In eval mode a window's encoder layer l at a position whose receptive field lies inside the
window equals its image's layer l there (the same conv, BatchNorm and activation of the same
pixels); only a frame along the window's edges, whose receptive field reaches the window's
zero padding, differs. MSFR (`scoring`) computes the images' layers 1..3 anyway, so the
windows' layers are those maps cut into windows (`patches.to_windows`), with the frames
computed from the window's own previous layer (`model.encoder_layer`, the conv applied to
just the rows and columns it needs, with the window's padding where the window has it).

Frames of 1, 2 and 2 positions (layers 1-3 of 64x64 windows, `interiors`): of the layers'
2.5 GFLOP per 64 windows, ~0.8 remain. Window corners must fall on the layers' grid: every
`score_options.STRIDES` is a multiple of their total stride, 4.
"""

import math

import chex
import jax.numpy as jnp

from cmaae_jax import model as model_lib
from cmaae_jax import patches


def interiors(num_layers: int, size: int = model_lib.PATCH) -> list[tuple[int, int]]:
    """Per encoder layer 1..num_layers, the rows [lo, hi) (and columns) of a `size` window's
    map that read no zero padding: output row r reads rows s*r - p .. s*r - p + k - 1."""
    lo, hi, out = 0, size, []
    for _, k, s, p, _, _ in model_lib.ENCODER[:num_layers]:
        lo, hi = -(-(lo + p) // s), (hi + p - k) // s + 1
        out.append((lo, hi))
    return out


def strides(num_layers: int) -> list[int]:
    """Per encoder layer 1..num_layers, its total stride from the image."""
    return [math.prod(spec[2] for spec in model_lib.ENCODER[: i + 1]) for i in range(num_layers)]


def feature_windows(features, stride: int) -> list:
    """The windows' parts of the images' layer maps [B, H/f, W/f, C]: [N, 64/f, 64/f, C]
    each, in `patches.to_windows` order (windows every `stride` pixels)."""
    out = []
    for f_BxhxwxC, f in zip(features, strides(len(features)), strict=True):
        if stride % f:
            raise ValueError(f"score.stride={stride} is not a multiple of {f}")
        out.append(patches.to_windows(f_BxhxwxC, model_lib.PATCH // f, stride // f))
    return out


def _region(variables, i: int, x_NxHxWxC, rows, cols, dtype):
    """Encoder layer i's outputs rows[0]..rows[1]-1 x cols[0]..cols[1]-1 of the window maps x
    (its input): the conv of the input rows and columns they read, zero padded where those
    lie beyond the window, as the window's own padding is."""
    _, k, s, p, _, _ = model_lib.ENCODER[i]
    slices, pads = [], []
    for (r0, r1), size in zip((rows, cols), x_NxHxWxC.shape[1:3], strict=True):
        first, end = s * r0 - p, s * (r1 - 1) - p + k  # input positions read
        slices.append(slice(max(first, 0), min(end, size)))
        pads.append((max(-first, 0), max(end - size, 0)))
    return model_lib.encoder_layer(variables, i, x_NxHxWxC[:, slices[0], slices[1]], pads, dtype)


def window_maps(variables, windows_Nx64x64x3, cut_windows, dtype=jnp.float32):
    """Encoder layer len(cut_windows)'s output of the windows (eval mode): each layer's
    interior from `cut_windows` (`feature_windows`), its frame computed."""
    h = windows_Nx64x64x3.astype(dtype)
    spans = interiors(len(cut_windows))
    for i, (cut, (lo, hi)) in enumerate(zip(cut_windows, spans, strict=True)):
        n = cut.shape[1]
        chex.assert_shape(cut, (h.shape[0], n, n, None))
        top = _region(variables, i, h, (0, lo), (0, n), dtype)
        bottom = _region(variables, i, h, (hi, n), (0, n), dtype)
        left = _region(variables, i, h, (lo, hi), (0, lo), dtype)
        right = _region(variables, i, h, (lo, hi), (hi, n), dtype)
        middle = jnp.concatenate([left, cut[:, lo:hi, lo:hi].astype(dtype), right], axis=2)
        h = jnp.concatenate([top, middle, bottom], axis=1)
    return h
