"""Anomaly maps: patch-wise reconstruction and multi-scale feature residuals (MSFR, eq. 14).

image [B,H,W,3] in [-1,1] -> 64x64 windows every `score.stride` pixels (64: the paper's
non-overlapping grid; 32/16/8 overlap) -> CMA-AE (eval mode) in one batch -> stitched or
blended reconstruction [B,H,W,3] (`patches.from_windows`) -> map [B,H,W], by one of two
methods (`score.method`):

* `msfr`: the multi-scale feature residuals of the image against its reconstruction, over
  encoder layers 1..max(scales) (`cmaae_jax.msfr`).
* `pixel`: the plain residual baseline, mean over channels of |I - I'| (Table IV column D).
* `segment`: the discriminative head (`model.segment_head`, segmenter.py) on the image and its
  blended reconstruction, once per whole image; the map is softplus(logit) = -log(1 - p).

For MSFR the images' encoder layers 1..max(scales) are computed first, and the windows' are
cut from them, only the frames along the windows' edges computed (`window_features`).

`make_map_fn` jits (or pmaps) the whole image-to-map path; `apply_sharded` pads a host batch to
the device count, shards it, runs the pmapped function and drops the padding.
"""

import functools

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cmaae_jax import map_levels, msfr, patches, pyramid, score_options, segmenter, window_features
from cmaae_jax import model as model_lib
from cmaae_jax import spread as spread_lib
from cmaae_jax.model import PATCH

Array = jax.Array


def reconstruct(
    model,
    variables,
    images_BxHxWx3: Array,
    stride: int = PATCH,
    mesh: Mesh | None = None,
    features=None,
) -> Array:
    """Reconstructs whole images window by window: windows -> model (eval) in one batch ->
    blend. `stride` 64 is the non-overlapping grid stitched back (exactly the grid path);
    smaller strides blend overlapping windows (`patches.from_windows`). With a `mesh`
    the windows are split over its devices. `features`: the images' encoder layers 1..m
    (`msfr.image_features`), from which the windows' layers 1..m are cut (`window_features`):
    the same reconstruction up to float rounding, with less work."""
    score_options.check_stride(stride)
    b, h, w, _ = images_BxHxWx3.shape
    chex.assert_shape(images_BxHxWx3, (b, h, w, 3))
    cut = 0 if features is None else min(len(features), window_features.CUT_LAYERS)
    if stride == PATCH:
        # A grid's windows cut at once: those a device takes lie in the band of rows whose
        # features it computed (`msfr.image_features`).
        windows = patches.to_windows(images_BxHxWx3, PATCH, stride)
        if features is None:
            fn = lambda v, x: model.apply(v, x, train=False)[0]  # noqa: E731
            rec_windows = spread_lib.split_batch(mesh, fn, variables, windows)
        else:
            cuts = window_features.cut_windows(features, cut, stride, 0, len(windows))
            fn = functools.partial(_from_cuts, model)
            rec_windows = spread_lib.split_batch(mesh, fn, variables, (windows, *cuts))
    else:
        # Overlapping windows cross the bands; each device cuts its own from the whole images
        # (and features), a chunk of them at a time (faster for them, measured both ways).
        ny, nx = patches.num_windows(h, w, PATCH, stride)
        fn = functools.partial(_cut_and_reconstruct, model, stride, cut)
        shared = (images_BxHxWx3, [] if features is None else features[:cut])
        rec_windows = spread_lib.split_batch(mesh, fn, variables, jnp.arange(b * ny * nx), shared)
    return patches.from_windows(rec_windows, b, h, w, stride)


def _from_cuts(model, v, windows_and_cuts):
    """Reconstructed windows from the windows and their layers' interiors (`window_features`)."""
    windows_Nx64x64x3, *cuts = windows_and_cuts
    h = window_features.window_maps(v, windows_Nx64x64x3, cuts, model.dtype)
    return model.apply(v, h, len(cuts), method="reconstruct_from")[0]


# Overlapping windows (`score.stride` < 64) on the CPU formulation are reconstructed in three
# parts: encoder layers 1-5 by chunks of ENCODE_CHUNK windows (cut, framed and encoded,
# `lax.map`), the dense layers (encoder 6, memory, repair, decoder 1) on all the device's
# windows at once (their weights read once), decoder layers 2-6 by chunks of DECODE_CHUNK: each
# chunk's buffers stay in cache, where whole layers of hundreds of windows went by chunk loops
# of their own (`conv_chunks.inference_chunks`) with their copies (BENCHMARKS.md,
# forty-eighth session).
ENCODE_CHUNK = 16
DECODE_CHUNK = 16
_DENSE_FROM = len(model_lib.ENCODER) - 1  # the encoder layer whose output the dense part takes


def _by_chunks(fn, x_Nx___, chunk: int):
    """fn over the rows of x by chunks of `chunk` (`lax.map`, the last one zero-padded), the
    outputs' rows concatenated."""
    n = x_Nx___.shape[0]
    count = -(-n // chunk)
    if count == 1:
        return fn(x_Nx___)
    padded = jnp.pad(x_Nx___, [(0, count * chunk - n)] + [(0, 0)] * (x_Nx___.ndim - 1))
    out = jax.lax.map(fn, padded.reshape(count, chunk, *x_Nx___.shape[1:]))
    return out.reshape(count * chunk, *out.shape[2:])[:n]


def _cut_and_reconstruct(model, stride: int, num_layers: int, v, index_N, shared, first):
    """`reconstruct`'s windows index_N (consecutive: first..first+N-1, then any padding), cut
    from the images and their layers 1..num_layers (`shared`: images, features; none where
    0). A chunk's windows follow its first index."""
    del first  # index_N[0]
    images, features = shared

    def framed(index_C):
        start, count = index_C[0], index_C.shape[0]
        windows = window_features.cut_pixels(images, stride, start, count)
        if not num_layers:  # no features: the windows' pixels
            return windows.astype(model.dtype)
        cuts = window_features.cut_windows(features, num_layers, stride, start, count)
        return window_features.window_maps(v, windows, cuts, model.dtype)

    if model.impl != "matmul":  # whole (accelerators)
        return model.apply(v, framed(index_N), num_layers, method="reconstruct_from")[0]

    def encoded(index_C):
        return model.apply(v, framed(index_C), num_layers, _DENSE_FROM, method="encoded_between")

    h = _by_chunks(encoded, index_N, ENCODE_CHUNK)
    h = model.apply(v, h, _DENSE_FROM, method="decoder_input_from")

    def decoded(h_chunk):
        return model.apply(v, h_chunk, 1, method="decoded_from")

    return _by_chunks(decoded, h, DECODE_CHUNK)


def pixel_map(images_BxHxWx3: Array, rec_BxHxWx3: Array) -> Array:
    """Plain residual baseline [B,H,W]: mean over channels of |I - I'| (images in [-1,1])."""
    chex.assert_equal_shape([images_BxHxWx3, rec_BxHxWx3])
    return jnp.mean(jnp.abs(images_BxHxWx3 - rec_BxHxWx3), axis=-1)


def anomaly_maps(
    model,
    variables,
    images_BxHxWx3: Array,
    method="msfr",
    scales=(1, 2, 3),
    normalize="none",
    stride: int = PATCH,
    flip: str = "none",
    mesh: Mesh | None = None,
    levels=(1,),
    components: bool = False,
    raw_parts: bool = False,
    median: str = "select",
):
    """The whole image-to-map path. Returns (maps [B,H,W] float32, reconstructions [B,H,W,3]).

    `stride`: window stride of the reconstruction (see `reconstruct`); static under jit.
    `flip`: `horizontal` averages the maps with those of the mirrored images, mirrored back
    (the reconstructions stay the images' own).
    `levels`: the image scales scored (`score.pyramid`; see `pyramid`), combined before
    `normalize`; the reconstructions are the full scale's.
    `mesh`: a mesh (`spread_lib.local_mesh`) over which one call's windows and encoder passes are
    split (under jit), so that even a single image keeps every device busy.
    `components`: `msfr_pixel` only, one level, no `normalize`: maps [B,H,W,2], its parts
    (`score_options.COMPONENTS`, each over its image's median) unaveraged; `raw_parts`
    (components only): the parts before their medians (`map_levels.over_median_on_host`
    finishes them).
    `median`: how the device takes medians (`map_levels.MEDIANS`; `sort` for ONNX).
    """
    score_options.check_options(method, normalize, stride, flip, levels, components, raw_parts)
    images_BxHxWx3 = images_BxHxWx3.astype(jnp.float32)

    def raw_map(net, variables, x_BxHxWx3):
        if method in ("pixel", "segment"):
            rec = reconstruct(net, variables, x_BxHxWx3, stride, mesh)
            if method == "pixel":
                return pixel_map(x_BxHxWx3, rec), rec
            logits = net.apply(variables, x_BxHxWx3, rec, method="segment")
            return segmenter.anomaly_score(logits), rec
        # the images' features serve the windows' first layers too (`window_features`):
        # overlapping windows' layers cost ~(64/stride)^2 times the images', so all that are
        # cut are computed for them
        cut = window_features.CUT_LAYERS if stride < PATCH else 0
        features = msfr.image_features(net, variables, x_BxHxWx3, max(*scales, cut), mesh)
        rec = reconstruct(net, variables, x_BxHxWx3, stride, mesh, features)
        msfr_BxHxW = msfr.msfr_map(net, variables, x_BxHxWx3, rec, scales, mesh, features)
        if method == "msfr_pixel":
            pixel = pixel_map(x_BxHxWx3, rec)
            if raw_parts:
                return jnp.stack((msfr_BxHxW, pixel), -1), rec  # COMPONENTS' order
            over_median = functools.partial(
                map_levels.normalize_maps, normalize="median", median=median
            )
            parts = (over_median(msfr_BxHxW), over_median(pixel))  # COMPONENTS' order
            return (jnp.stack(parts, -1) if components else 0.5 * (parts[0] + parts[1])), rec
        return msfr_BxHxW, rec

    def maps_and_reconstructions(net, variables, images_BxHxWx3):
        level_fn = functools.partial(raw_map, net, variables)
        amap, rec = pyramid.pyramid_maps(level_fn, images_BxHxWx3, levels)
        return map_levels.normalize_maps(amap, normalize, median), rec

    maps, rec = model_lib.per_platform(model, maps_and_reconstructions, variables, images_BxHxWx3)
    if flip == "horizontal":
        mirror = images_BxHxWx3[:, :, ::-1]
        mirrored, _ = model_lib.per_platform(model, maps_and_reconstructions, variables, mirror)
        maps = 0.5 * (maps + mirrored[:, :, ::-1])
    return maps, rec


def make_map_fn(
    model,
    method="msfr",
    scales=(1, 2, 3),
    pmapped: bool = False,
    impl=None,
    normalize="none",
    stride: int = PATCH,
    flip: str = "none",
    spread: bool = False,
    levels=(1,),
    components: bool = False,
    raw_parts: bool = False,
    median: str = "select",
):
    """A compiled `(variables, images) -> maps`.

    Args:
      model: a `CMAAE`.
      method: `msfr`, `pixel` or `segment` (a model with `segment_head`).
      scales: encoder layers used by `msfr`.
      pmapped: if True the function is `jax.pmap`ped over the local devices: images
        [D, B/D, H, W, 3] (see `spread.shard`/`spread.apply_sharded`), variables replicated
        with a leading device axis (`spread.replicate`), maps [D, B/D, H, W]. Otherwise
        jitted: images [B,H,W,3].
      impl: convolution implementation used for scoring (same variables, same results up to
        float rounding); None keeps the model's own. On CPU the model's `matmul` layers are
        the faster forward too: their convs are native and their stride-2 transposed convs
        are sub-pixel (four 2x2 convs), where `xla`'s input-dilated transposed convs multiply
        inserted zeros (MSFR of a 512x512 image: decoder 63 vs 133 ms, whole map 237 vs
        312 ms, measured side by side).
      normalize: among `map_levels.NORMALIZE` (see `map_levels.normalize_maps`).
      stride: window stride among `score_options.STRIDES` (see `reconstruct`); the model's
        cost grows with the window count, ~(64/stride)^2 times the grid's.
      flip: among `score_options.FLIPS` (see `anomaly_maps`).
      spread: jitted only: split each call's work over the local devices (`anomaly_maps`),
        for latency on few images; pmap spreads whole images instead.
      levels: the image scales scored (`score.pyramid`; see `anomaly_maps`).
      components: `msfr_pixel`'s parts, maps [..., H, W, 2] (see `anomaly_maps`).
      raw_parts: with `components`, the parts before their medians
        (`map_levels.over_median_on_host`).
      median: how medians on the device are taken (`map_levels.MEDIANS`).
    """
    score_options.check_options(method, normalize, stride, flip, levels, components, raw_parts)
    scales = score_options.check_scales(scales)
    mesh = spread_lib.local_mesh() if spread and not pmapped else None
    if impl is not None and impl != getattr(model, "impl", impl):
        model = model.clone(impl=impl)

    def map_fn(variables, images_BxHxWx3):
        return anomaly_maps(
            model, variables, images_BxHxWx3, method, scales, normalize, stride, flip, mesh,
            levels, components, raw_parts, median,
        )[0]  # fmt: skip

    return jax.pmap(map_fn) if pmapped else jax.jit(map_fn)
