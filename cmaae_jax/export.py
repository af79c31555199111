"""A trained model as a self-contained artifact: the image-to-anomaly-map function, serialized.

`save` traces the whole map path (grid patches -> CMA-AE in eval mode -> stitched reconstruction
-> MSFR or pixel map) for a fixed batch of `image_size` images, with the trained variables baked
in as constants, and writes it with `jax.export` (StableHLO plus calling convention) next to a
JSON sidecar: threshold, image size, method, input layout and scaling, a SHA-256 of the artifact.
Exported for several platforms (`platforms=("cpu", "cuda")`, made on any machine), the artifact
holds each platform's convolutions (`model.conv_impl=auto`, layers.py): the CPU formulation for
CPU, native convolutions (cuDNN) for CUDA; the platform running it picks its own.

The loader (`export_loader.load`) needs only jax and numpy; this module, the writer, needs the
package.
"""

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cmaae_jax.export_loader import FORMAT, SCALING, ExportError, sidecar_path

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def reference_canvas(ref, size: int) -> np.ndarray:
    """The per-position reference ([2K, h, w]: mean and spread of each of K map parts,
    `score.reference`, built by evaluation at the valid map size h x w) at the top left of
    the S x S canvas [2K, S, S]; the padding the loaders crop off gets mean 0 and spread 1.
    The exported function applies it (`refer`), so its maps are the library's for images of
    that size; the loaders refuse other sizes (`export_loader.check_reference_size`). None gives the
    canvas that changes nothing."""
    parts = 1 if ref is None else np.shape(ref)[0] // 2
    canvas = np.zeros((2 * parts, size, size), np.float32)
    canvas[1::2] = 1.0
    if ref is None:
        return canvas
    ref = np.asarray(ref, np.float32)
    h, w = ref.shape[-2:]
    if h > size or w > size:
        raise ExportError(f"reference of shape {(h, w)} does not fit the {size} canvas")
    canvas[:, :h, :w] = ref
    return canvas


def refer(maps, canvas):
    """Maps [B, S, S] (or [B, S, S, K] of K parts) referred to a `reference_canvas`: minus the
    mean, over the spread (each part, then the parts averaged), as reference.apply."""
    if canvas.shape[0] == 2:
        return (maps - canvas[0]) / canvas[1]
    planes = jnp.moveaxis(canvas, 0, -1)
    return ((maps - planes[..., 0::2]) / planes[..., 1::2]).mean(-1)


def export_map_fn(config, variables, batch: int, platforms=None, reference=None):
    """`jax.export.Exported` of images float32 [batch, S, S, 3] -> maps float32 [batch, S, S];
    minus the per-position mean, over the spread, of `reference` ([2K, h, w]: of each of K
    map parts, then averaged) when given."""
    from cmaae_jax import model, score_options, scoring  # the loader must not need them

    net = model.from_config(config)
    options = score_options.map_options(config.score)
    variables = jax.tree.map(jnp.asarray, variables)
    size = config.data.image_size
    canvas = jnp.asarray(reference_canvas(reference, size))
    options["components"] = canvas.shape[0] > 2  # a reference of each of the map's parts

    def image_to_map(images_BxSxSx3):
        maps, _ = scoring.anomaly_maps(net, variables, images_BxSxSx3, **options)
        return refer(maps, canvas)

    spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.export.export(jax.jit(image_to_map), platforms=platforms)(spec)


def describe(
    config, threshold: float, batch: int, reference=None, image_score="max", image_rim=0
) -> dict:
    """What every export format records: threshold, image score, score settings, input and
    output. `image_score` (`image_score.IMAGE_SCORES`) is recorded as the share of each map's
    highest pixels whose mean scores its image (`image_top_share`; 0: the maximum) and the
    rim left out first (`image_rim`, `top_inner`'s; 0 for the others)."""
    from cmaae_jax import image_score as image_score_lib  # the loader needs none of them
    from cmaae_jax import reference as reference_lib
    from cmaae_jax import score_options

    size = config.data.image_size
    top = image_score_lib.check(image_score) != "max"
    rim = int(image_rim) if image_score == image_score_lib.INNER else 0
    ref = None
    if reference is not None:
        ref = {
            "shape": list(np.shape(reference)[-2:]),
            "kind": reference_lib.kind_of(reference),
            "parts": reference_lib.parts(reference),
        }
    return {
        "reference": ref,
        "threshold": float(threshold),
        "image_score": image_score,
        "image_top_share": image_score_lib.TOP_SHARE if top else 0.0,
        "image_rim": rim,
        "image_size": size,
        "batch": batch,
        # `auto`: as evaluation resolved
        "method": score_options.map_options(config.score)["method"],
        "scales": list(config.score.scales),
        "normalize": config.score.get("normalize", "none"),
        "resize": config.data.get("resize", "square"),
        "stride": config.score.get("stride", 64),
        "pyramid": list(config.score.get("pyramid", (1,))),
        "input": {"shape": [batch, size, size, 3], "layout": "NHWC", "dtype": "float32"},
        "input_scaling": SCALING,
        "output": {"shape": [batch, size, size], "dtype": "float32"},
        "decision": "pixel defective where map >= threshold; image score = "
        + (
            "mean of the highest image_top_share of its map's pixels (at least one)"
            if top
            else "max of its map"
        )
        + (", image_rim pixels on every side left out first" if rim else "")
        + (
            ""
            if ref is None
            else "; maps already have the normal per-position mean subtracted"
            + (" and are divided by its spread" if ref["kind"] == "zscore" else "")
            + (" (each of msfr_pixel's parts, then averaged)" if ref["parts"] > 1 else "")
        ),
        "model": {
            **{k: config.model[k] for k in ("variant", "memory_size", "latent_dim", "gate")},
            "segment_head": bool(config.model.get("segment_head", False)),
        },
    }


def save(
    path, config, variables, threshold: float, batch: int = 1, platforms=None, reference=None,
    image_score="max", image_rim=0, **extra,
):  # fmt: skip
    """Writes the artifact at `path` and its sidecar `<path>.json`; returns the sidecar dict.
    `reference`: the evaluation's per-position reference (score.reference), or None;
    `image_score`, `image_rim`: how evaluation scored images (`describe`)."""
    if batch < 1:
        raise ExportError(f"batch={batch}: must be at least 1")
    unknown = set(platforms or ()) - set(PLATFORMS)
    if unknown:
        raise ExportError(f"platforms {sorted(unknown)} unknown; choose among {PLATFORMS}")
    exported = export_map_fn(config, variables, batch, platforms, reference)
    blob = bytes(exported.serialize())
    meta = {
        "format": FORMAT,
        "artifact": pathlib.Path(path).name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        **describe(config, threshold, batch, reference, image_score, image_rim),
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        **extra,
    }
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)  # a reader never sees half an artifact
    sidecar_path(path).write_text(json.dumps(meta, indent=2))
    return meta
