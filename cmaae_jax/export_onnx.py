"""ONNX export of the image-to-anomaly-map function, and a runner needing only onnxruntime.

`save_onnx` converts the same function as `export.save` (grid or window patches -> CMA-AE in
eval mode -> stitched reconstruction -> MSFR or pixel map, `score.normalize`, `score.stride`,
variables baked in as constants) with jax2onnx, for a fixed batch of S x S images:

    input  "images"  float32 [batch, S, S, 3], NHWC, RGB scaled x / 127.5 - 1 (in [-1, 1])
    output "maps"    float32 [batch, S, S]; pixel defective where map >= threshold

The model is built with native convolutions (`impl="xla"`) in float32 whatever the training
`model.conv_impl` / `model.dtype`. The threshold, the input scaling and the rest of the
`export` sidecar (format "onnx") are in the ONNX model's metadata_props (key "cmaae_jax" holds
the whole JSON; "threshold", "input_scaling", "decision", "image_size", "batch", "resize" are
plain keys) and in the JSON sidecar `<path>.json`, which adds the file's SHA-256.

`load_onnx` needs only numpy and onnxruntime (copy this file where the training code is not
installed; the converter is imported by `save_onnx` alone):

    mapper = load_onnx("cmaae.onnx")
    maps = mapper(images_NxSxSx3_uint8)   # float32 [N, S, S]; batches padded and chunked
    masks, scores = mapper.masks(maps), mapper.scores(maps)

A `data.resize=keep_aspect` model takes images whose long side is S: each is reflect-padded
bottom/right into the S x S canvas and its map cropped back, as `export_loader.ExportedMapper` does.
"""

import hashlib
import importlib.metadata
import json
import logging
import pathlib

import numpy as np

FORMAT = "onnx"
OPSET = 18  # ONNX Runtime >= 1.14; the converter's lowering is checked by onnxruntime at 18
INPUT, OUTPUT = "images", "maps"
META_KEY = "cmaae_jax"

try:  # the package's error (a UserError); the copied runner works without the package
    from cmaae_jax.export_loader import SCALING, ExportError, sidecar_path
except ImportError:  # pragma: no cover
    SCALING = "uint8 RGB x -> x / 127.5 - 1 (float32 in [-1, 1]); grayscale repeated to 3 channels"

    class ExportError(ValueError):
        """An ONNX model that cannot be written, found or fed."""

    def sidecar_path(path) -> pathlib.Path:
        path = pathlib.Path(path)
        return path.with_name(path.name + ".json")


def _converter():
    try:
        import jax2onnx
        import onnx
    except ImportError as e:
        raise ExportError(
            f"--format=onnx needs jax2onnx and onnx ({e}): pip install -e '.[onnx]'"
        ) from e
    return jax2onnx, onnx


def _map_function(config, variables, reference=None):
    """images float32 [B, S, S, 3] -> maps [B, S, S]: the run's score config, native convs."""
    import jax
    import jax.numpy as jnp

    from cmaae_jax import model, score_options, scoring
    from cmaae_jax.export import refer, reference_canvas

    net = model.from_config(config).clone(impl="xla", dtype=jnp.float32)
    options = score_options.map_options(config.score)
    if config.data.image_size == model.PATCH:
        # One window whatever the stride; a smaller stride blends it with empty phases,
        # zero-size tensors that jax2onnx 0.17 lowers to an Add onnxruntime rejects.
        options["stride"] = model.PATCH
    variables = jax.tree.map(jnp.asarray, variables)
    size = config.data.image_size
    canvas = jnp.asarray(reference_canvas(reference, size))
    options["components"] = canvas.shape[0] > 2  # a reference of each of the map's parts

    def image_to_map(images_BxSxSx3):
        # ONNX has no bit cast at this opset: medians by sorting (map_levels.MEDIANS).
        maps, _ = scoring.anomaly_maps(net, variables, images_BxSxSx3, **options, median="sort")
        return refer(maps, canvas)

    return image_to_map


def _tidy(graph):
    """Drops the converter's value_info (optional shape hints, some in the wrong layout, which
    onnxruntime warns about) and initializers no node reads."""
    del graph.value_info[:]
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _metadata(
    config, threshold, batch, converter_version, extra, reference=None, image=("max", 0)
) -> dict:
    from cmaae_jax import export  # saving needs the package; the loader does not

    described = export.describe(config, threshold, batch, reference, *image)
    described["input"] = {"name": INPUT, **described["input"]}
    described["output"] = {"name": OUTPUT, **described["output"]}
    return {
        "format": FORMAT,
        **described,
        "compute_dtype": "float32",
        "opset": OPSET,
        "converter": f"jax2onnx {converter_version}",
        **extra,
    }


def save_onnx(
    path, config, variables, threshold: float, batch: int = 1, reference=None,
    image_score="max", image_rim=0, **extra,
) -> dict:  # fmt: skip
    """Writes the ONNX model at `path` and its sidecar `<path>.json`; returns the sidecar.
    `reference`: the evaluation's per-position reference (score.reference), or None;
    `image_score`, `image_rim`: how evaluation scored images (`export.describe`)."""
    import jax
    import jax.numpy as jnp

    if batch < 1:
        raise ExportError(f"batch={batch}: must be at least 1")
    jax2onnx, onnx = _converter()
    # Its serializer warns of the shape hints of jnp.median's internals, which _tidy drops.
    logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)
    size = config.data.image_size
    spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    try:
        proto = jax2onnx.to_onnx(
            _map_function(config, variables, reference), [spec], model_name="cmaae", opset=OPSET,
            input_names=[INPUT], output_names=[OUTPUT],
        )  # fmt: skip
    except NotImplementedError as e:  # a primitive the converter has no rule for
        raise ExportError(
            f"jax2onnx cannot convert score.method={config.score.method}, score.normalize="
            f"{config.score.get('normalize', 'none')}, score.stride="
            f"{config.score.get('stride', 64)}: {e}"
        ) from e
    _tidy(proto.graph)
    version = importlib.metadata.version("jax2onnx")
    image = (image_score, image_rim)
    meta = _metadata(config, threshold, batch, version, extra, reference, image)
    props = {META_KEY: json.dumps(meta)}
    props.update({k: str(meta[k]) for k in ("threshold", "image_size", "batch", "resize")})
    props.update(input_scaling=SCALING, decision=meta["decision"])
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    blob = proto.SerializeToString()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)  # a reader never sees half a model
    side = {"artifact": path.name, "sha256": hashlib.sha256(blob).hexdigest(), **meta}
    sidecar_path(path).write_text(json.dumps(side, indent=2))
    return side


class OnnxMapper:
    """Runs an exported ONNX model on any number of images, in batches of its fixed size."""

    def __init__(self, session, meta: dict):
        self.meta, self._session = meta, session
        self.threshold = float(meta["threshold"])
        self.image_size, self.batch = meta["image_size"], meta["batch"]
        self.resize = meta.get("resize", "square")

    def prepare(self, images) -> np.ndarray:
        """uint8 [0, 255] or float [-1, 1], [N,S,S,3|1], [N,S,S] or one image -> float32
        [N, S, S, 3] in [-1, 1]."""
        x, s = np.asarray(images), self.image_size
        if x.ndim in (2, 3) and x.shape[:2] == (s, s):
            x = x[None]
        x = x[..., None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1:3] != (s, s) or x.shape[3] not in (1, 3):
            raise ExportError(f"images of shape {x.shape}: this model takes [N, {s}, {s}, 3]")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 127.5 - 1.0
        elif np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        else:
            raise ExportError(f"images of dtype {x.dtype}: expected uint8 or float in [-1, 1]")
        return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x

    def _canvas(self, images):
        """keep_aspect: images of sides <= S reflect-padded into S x S; (canvas, sizes)."""
        x = images if isinstance(images, (list, tuple)) else np.asarray(images)
        if isinstance(x, np.ndarray):
            x = [x] if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3)) else list(x)
        s, out, sizes = self.image_size, [], []
        for im in map(np.asarray, x):
            im = im[..., None] if im.ndim == 2 else im
            if im.ndim != 3 or not (0 < im.shape[0] <= s and 0 < im.shape[1] <= s):
                raise ExportError(f"image of shape {im.shape}: scale it so its long side is {s}")
            pad = ((0, s - im.shape[0]), (0, s - im.shape[1]), (0, 0))
            out.append(np.pad(im, pad, mode="reflect"))
            sizes.append(im.shape[:2])
        if len({(a.shape[2], a.dtype) for a in out}) > 1:
            raise ExportError("images of 1 and 3 channels, or of two dtypes, mixed in one call")
        return self.prepare(np.stack(out)), sizes

    def _maps(self, x_NxSxSx3) -> np.ndarray:
        n, b, out = len(x_NxSxSx3), self.batch, []
        for lo in range(0, n, b):
            chunk = x_NxSxSx3[lo : lo + b]
            pad = np.zeros((b - len(chunk),) + chunk.shape[1:], np.float32)
            maps = self._session.run([OUTPUT], {INPUT: np.concatenate([chunk, pad])})[0]
            out.append(maps[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0,) + x_NxSxSx3.shape[1:3], np.float32)

    def __call__(self, images):
        """Maps float32 [N, S, S] (keep_aspect: cropped to each image, a list if sizes differ)."""
        if self.resize != "keep_aspect":
            return self._maps(self.prepare(images))
        canvas, sizes = self._canvas(images)
        shape = (self.meta.get("reference") or {}).get("shape")
        if shape is not None and any(tuple(hw) != tuple(shape) for hw in sizes):
            raise ExportError(f"this model's reference (score.reference) is for {shape} images")
        out = [m[:h, :w] for m, (h, w) in zip(self._maps(canvas), sizes, strict=True)]
        return np.stack(out) if len({m.shape for m in out}) == 1 else out

    def masks(self, maps):
        if isinstance(maps, list):
            return [np.asarray(m) >= self.threshold for m in maps]
        return np.asarray(maps) >= self.threshold

    def scores(self, maps) -> np.ndarray:
        """Each map's image score: the mean of its highest `image_top_share` of pixels, at
        least one (the maximum where the share is 0 or unrecorded), `image_rim` pixels on
        every side left out first, as `export_loader.top_mean` (restated here: this loader needs
        neither jax nor the package)."""
        share, rim = self.meta.get("image_top_share", 0.0), self.meta.get("image_rim", 0)
        out = []
        for m in maps:
            m = np.asarray(m, np.float32)
            h, w = m.shape[-2:]
            flat = np.ravel(m[rim : h - rim, rim : w - rim] if 0 < 2 * rim < min(h, w) else m)
            k = max(1, round(share * flat.size))
            out.append(np.partition(flat, flat.size - k)[-k:].mean(dtype=np.float64))
        return np.array(out)


def load_onnx(path, providers=("CPUExecutionProvider",)) -> OnnxMapper:
    """Opens a model written by `save_onnx` (needs numpy and onnxruntime only)."""
    import onnxruntime

    path = pathlib.Path(path)
    if not path.is_file():
        raise ExportError(f"{path} not found")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=list(providers))
    except Exception as e:  # onnxruntime raises its own types for bad files
        raise ExportError(f"{path} is not a loadable ONNX model: {e}") from e
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads(props.get(META_KEY, "{}"))
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} has no {META_KEY} metadata: not written by save_onnx")
    return OnnxMapper(session, meta)
