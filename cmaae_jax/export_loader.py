"""The model-free loader of an exported image-to-anomaly-map function (`export.save`).

`load` needs only jax and numpy (this file imports nothing else at module level; copy it next
to the two files to run a model where the training code is not installed):

    mapper = load("cmaae.jaxexport")
    maps = mapper(images_NxSxSx3_uint8)   # float32 [N, S, S]
    masks, scores = mapper.masks(maps), mapper.scores(maps)

A run trained with `data.resize=keep_aspect` is exported at the S x S canvas too (the sidecar's
`resize`): give the loader images scaled so that their LONG side is S (keep the aspect ratio,
e.g. PIL's bilinear resize), as a list or one image; each is placed at the top left of the
canvas, reflected bottom/right, and its map is cropped back to its size. Those maps equal the
library's (which pads only to the next multiple of 64) away from the last few pixels before
the padded edge; with `score.normalize=median` the median is the canvas's.
"""

import hashlib
import json
import pathlib

import jax
import numpy as np

FORMAT = "cmaae_jax.export/1"
SCALING = "uint8 RGB x -> x / 127.5 - 1 (float32 in [-1, 1]); grayscale repeated to 3 channels"


try:  # a user error of this package; the copied loader runs without the package
    from cmaae_jax.errors import UserError

    _ERROR_BASES = (UserError, ValueError)
except ImportError:  # pragma: no cover
    _ERROR_BASES = (ValueError,)


class ExportError(*_ERROR_BASES):
    """An artifact that cannot be written, found, verified or fed."""


def sidecar_path(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.name + ".json")


def check_reference_size(meta: dict, sizes) -> None:
    """Raises ExportError for an image whose valid size is not the one its reference has."""
    shape = (meta.get("reference") or {}).get("shape")
    for hw in sizes:
        if shape is not None and tuple(hw) != tuple(shape):
            raise ExportError(
                f"image of size {tuple(hw)}: this model subtracts a per-position reference "
                f"of normal maps made at {tuple(shape)} (score.reference); give images of "
                f"that size"
            )


def top_mean(map_hxw, share: float, rim: int = 0) -> float:
    """The mean of the highest `share` of a map's pixels, at least one (0: the maximum), with
    `rim` pixels left out on every side first where the map is wider than twice that."""
    m = np.asarray(map_hxw, np.float32)
    h, w = m.shape[-2:]
    m = m[rim : h - rim, rim : w - rim] if 0 < 2 * rim < min(h, w) else m
    flat = np.ravel(m)
    k = max(1, round(share * flat.size))
    return float(np.partition(flat, flat.size - k)[-k:].mean(dtype=np.float64))


class ExportedMapper:
    """Runs a loaded artifact on any number of images, in batches of its fixed size."""

    def __init__(self, exported, meta: dict):
        self.meta = meta
        self.threshold = meta["threshold"]
        self.image_size = meta["image_size"]
        self.batch = meta["batch"]
        self.resize = meta.get("resize", "square")
        self._fn = jax.jit(exported.call)

    def _canvas(self, images):
        """keep_aspect: (images [N, S, S(, C)] reflect-padded bottom/right, valid sizes)."""
        x = images if isinstance(images, (list, tuple)) else np.asarray(images)
        if isinstance(x, np.ndarray):  # [N,h,w,C], [N,h,w] (grey), [h,w,1|3] or [h,w]: one
            one = x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3))
            x = [x] if one else list(x)
        s, out, sizes = self.image_size, [], []
        for im in x:
            im = np.asarray(im)
            im = im[..., None] if im.ndim == 2 else im
            if im.ndim != 3 or not (0 < im.shape[0] <= s and 0 < im.shape[1] <= s):
                raise ExportError(
                    f"image of shape {im.shape}: this model (data.resize=keep_aspect) takes "
                    f"images whose sides are at most {s}: scale each so its long side is {s}"
                )
            pad = ((0, s - im.shape[0]), (0, s - im.shape[1]), (0, 0))
            out.append(np.pad(im, pad, mode="reflect"))
            sizes.append(im.shape[:2])
        if len({a.shape for a in out}) > 1:
            raise ExportError("images of 1 and 3 channels, or of two dtypes, mixed in one call")
        return np.stack(out) if out else np.zeros((0, s, s, 3), np.uint8), sizes

    def prepare(self, images) -> np.ndarray:
        """uint8 [0, 255] or float [-1, 1] images, [N,S,S,3], [N,S,S,1], [N,S,S] or one image,
        -> float32 [N, S, S, 3] in [-1, 1]. keep_aspect: images of sides at most S (a list, or
        one), placed in the S x S canvas (`_canvas`)."""
        if self.resize == "keep_aspect":
            images = self._canvas(images)[0]
        x = np.asarray(images)
        s = self.image_size
        if x.ndim in (2, 3) and x.shape[:2] == (s, s):
            x = x[None]  # one image
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:3] != (s, s) or x.shape[3] not in (1, 3):
            raise ExportError(
                f"images of shape {x.shape}: this model takes [N, {s}, {s}, 3] (or 1 channel); "
                f"resize them to {s}x{s} first"
            )
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 127.5 - 1.0
        elif np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        else:
            raise ExportError(f"images of dtype {x.dtype}: expected uint8 or float in [-1, 1]")
        return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x

    def __call__(self, images) -> np.ndarray:
        """Anomaly maps float32 [N, S, S]; keep_aspect: each map cropped to its image's size
        (a list when the sizes differ)."""
        if self.resize != "keep_aspect":
            return self._maps(self.prepare(images))
        canvas, sizes = self._canvas(images)
        check_reference_size(self.meta, sizes)
        maps = self._maps(self.prepare(canvas))  # S x S already: placed as they are
        out = [m[:h, :w] for m, (h, w) in zip(maps, sizes, strict=True)]
        return np.stack(out) if len({m.shape for m in out}) == 1 else out

    def _maps(self, x) -> np.ndarray:
        n, b = len(x), self.batch
        out = []
        for lo in range(0, n, b):
            chunk = x[lo : lo + b]
            if len(chunk) < b:
                pad = np.zeros((b - len(chunk),) + chunk.shape[1:], np.float32)
                chunk = np.concatenate([chunk, pad])
            out.append(np.asarray(self._fn(chunk))[: min(b, n - lo)])
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size))

    def masks(self, maps):
        if isinstance(maps, list):  # keep_aspect maps of different sizes
            return [np.asarray(m) >= self.threshold for m in maps]
        return np.asarray(maps) >= self.threshold

    def scores(self, maps) -> np.ndarray:
        """Each map's image score: the mean of its highest `image_top_share` of pixels, at
        least one (the maximum where the share is 0 or unrecorded), `image_rim` pixels on every
        side left out first, as `image_score.image_scores`."""
        share, rim = self.meta.get("image_top_share", 0.0), self.meta.get("image_rim", 0)
        return np.array([top_mean(m, share, rim) for m in maps])


def load(path) -> ExportedMapper:
    """Loads and verifies an artifact written by `save` (needs only jax and numpy)."""
    path = pathlib.Path(path)
    side = sidecar_path(path)
    for p in (path, side):
        if not p.is_file():
            raise ExportError(f"{p} not found (an export is the artifact and its .json sidecar)")
    try:
        meta = json.loads(side.read_text())
    except ValueError as e:
        raise ExportError(f"{side} is not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise ExportError(f"{side}: format {meta.get('format')!r}, expected {FORMAT!r}")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise ExportError(f"{path} is corrupt or truncated: its SHA-256 does not match {side}")
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # a foreign or newer serialization format
        raise ExportError(f"{path} cannot be deserialized by jax {jax.__version__}: {e}") from e
    backend = jax.default_backend()
    names = {"gpu": ("cuda", "rocm")}.get(backend, (backend,))
    if not set(names) & set(exported.platforms):
        raise ExportError(
            f"{path} was exported for {list(exported.platforms)}, this machine runs "
            f"{'/'.join(names)}; export again with --platforms including {names[0]}"
        )
    return ExportedMapper(exported, meta)
