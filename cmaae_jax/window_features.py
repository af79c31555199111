"""The encoder's first layers of windows, cut from their images' own feature maps.

In eval mode a window's encoder layer l at a position whose receptive field lies inside the
window equals its image's layer l there (the same conv, BatchNorm and activation of the same
pixels); only a frame along the window's edges, whose receptive field reaches the window's
zero padding, differs. MSFR (`scoring`) computes the images' layers 1..3 anyway, so the
windows' layers are those maps cut into windows (`cut_windows`), with the frames
computed from the window's own previous layer (`model.encoder_layer`, the conv applied to
just the rows and columns it needs, with the window's padding where the window has it).

Frames of 1, 2 and 2 positions (layers 1-3 of 64x64 windows, `interiors`): of the layers'
2.5 GFLOP per 64 windows, ~0.8 remain. Window corners must fall on the layers' grid: every
`score_options.STRIDES` is a multiple of their total stride, 4.
"""

import math

import chex
import jax
import jax.numpy as jnp

from cmaae_jax import model as model_lib
from cmaae_jax import patches

# The layers worth cutting: a 64x64 window's layer 4 keeps an interior of 4x4 of its 8x8
# positions, layer 5 none.
CUT_LAYERS = 3


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


def window_origins(h: int, w: int, stride: int, first, count: int):
    """(image, top, left): the pixel corners of windows first..first+count-1 of [B, h, w]
    images (`patches.to_windows` order, windows every `stride` pixels; `first` may be
    traced)."""
    ny, nx = patches.num_windows(h, w, model_lib.PATCH, stride)
    n = first + jnp.arange(count)
    return n // (ny * nx), n // nx % ny * stride, n % nx * stride


def _gather(x_BxHxWxC, image, top, left, side: int):
    """[count, side, side, C]: the squares of x at the given corners (indices past x's end
    give its last square)."""
    size = (1, side, side, x_BxHxWxC.shape[-1])

    def cut(i, y, x):
        return jax.lax.dynamic_slice(x_BxHxWxC, (i, y, x, 0), size)[0]

    return jax.vmap(cut)(image, top, left)


def cut_pixels(images_BxHxWxC, stride: int, first, count: int):
    """Windows first..first+count-1 of the images (as `patches.to_windows` cuts them, indices
    past the last window give some window's): [count, 64, 64, C]."""
    _, h, w, _ = images_BxHxWxC.shape
    image, top, left = window_origins(h, w, stride, first, count)
    return _gather(images_BxHxWxC, image, top, left, model_lib.PATCH)


def cut_windows(features, num_layers: int, stride: int, first, count: int) -> list:
    """The interiors (`interiors`) of windows first..first+count-1 (`patches.to_windows`
    order, windows every `stride` pixels; `first` may be traced, indices past the last
    window give some window's) in the images' layer maps `features` [B, H/f, W/f, C]:
    [count, hi - lo, hi - lo, C] for each of layers 1..num_layers."""
    b, h, w, _ = features[0].shape
    f1 = strides(1)[0]
    ny, nx = patches.num_windows(h * f1, w * f1, model_lib.PATCH, stride)
    every = isinstance(first, int) and first == 0 and count == b * ny * nx
    static = every and stride == model_lib.PATCH  # a grid's windows all at once: slices
    image, top, left = window_origins(h * f1, w * f1, stride, first, count)
    out, spans = [], interiors(num_layers)
    for f_BxhxwxC, f, (lo, hi) in zip(features, strides(num_layers), spans, strict=False):
        if stride % f:
            raise ValueError(f"score.stride={stride} is not a multiple of {f}")
        if static:
            windows = patches.to_windows(f_BxhxwxC, model_lib.PATCH // f, stride // f)
            out.append(windows[:, lo:hi, lo:hi])
            continue
        out.append(_gather(f_BxhxwxC, image, top // f + lo, left // f + lo, hi - lo))
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
    interior given (`cut_windows` gives them), its frame computed."""
    h = windows_Nx64x64x3.astype(dtype)
    spans = interiors(len(cut_windows))
    for i, (cut, (lo, hi)) in enumerate(zip(cut_windows, spans, strict=True)):
        _, k, s, p, _, _ = model_lib.ENCODER[i]
        n = (h.shape[1] + 2 * p - k) // s + 1  # the layer's output size
        chex.assert_shape(cut, (h.shape[0], hi - lo, hi - lo, None))
        top = _region(variables, i, h, (0, lo), (0, n), dtype)
        bottom = _region(variables, i, h, (hi, n), (0, n), dtype)
        left = _region(variables, i, h, (lo, hi), (0, lo), dtype)
        right = _region(variables, i, h, (lo, hi), (hi, n), dtype)
        middle = jnp.concatenate([left, cut.astype(dtype), right], axis=2)
        h = jnp.concatenate([top, middle, bottom], axis=1)
    return h
