"""Natural images for GAAGA, loaded once on the host (config `anomaly.natural_source`).

Owns the `anomaly.natural_source` option (`is_source`, `SOURCES_HELP`), `natural_bank` (the
bank of natural images whose crops GAAGA pastes as anomalies: the photographs shipped inside
scikit-image, procedurally generated pictures, a folder of images or a TFDS dataset),
`bank_for_config` (the same, with the settings a training config gives) and
`NaturalImagesError`. The on-device synthesis that uses the bank is `cmaae_jax.gaaga`.

The `skimage` source reads the image files of the installed scikit-image package's `data`
folder directly (found with `importlib.util.find_spec`; scikit-image is not imported and nothing
is downloaded). Selection rule: the fixed list `SKIMAGE_PHOTOS`, i.e. the files whose name without
suffix is in it, sorted by name. The list holds the real photographs of scenes, objects and
textures (checked on scikit-image 0.26) whose shorter side is at least 256 px (at most a 2x
upscale at 512 px). Left out: drawings and synthetic pictures (chessboard_*, color (a colour
wheel), phantom, logo, horse (a silhouette)), a rendered text page (page), a near-duplicate
(motorcycle_right, the stereo partner of motorcycle_left), nearly featureless frames
(clock_motion, a motion-blurred clock on a flat wall; cell, mostly flat background), images under
256 px (text, microaneurysms, multipage*, the gif) and non-image files (*.npy, *.npz, *.xml).
The bank holds the whole photographs resized to the square (as the other sources do), then, up
to the bank size, seeded random square views of them (`_random_view`).
"""

import concurrent.futures
import importlib.util
import pathlib
import socket
import warnings

import numpy as np
from PIL import Image

from cmaae_jax import errors, images, synthetic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SOURCES_HELP = "skimage, procedural, dir:PATH or tfds:NAME"  # the forms `is_source` accepts
# The photographs of scikit-image's data folder that the `skimage` source uses (module docstring).
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "ihc",
    "moon",
    "motorcycle_left",
    "retina",
    "rocket",
)


class NaturalImagesError(errors.UserError, ValueError):
    """An `anomaly.natural_source` that gives no usable images; the message says why."""


def is_source(source):
    """True when `source` has a form `natural_bank` reads (loading it may still fail)."""
    return source in ("skimage", "procedural") or source.startswith(("dir:", "tfds:"))


def _bank_from_dir(path, image_size, count, seed):
    root = pathlib.Path(path)
    if not root.is_dir():
        raise NaturalImagesError(f"anomaly.natural_source: folder {path!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    candidates = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES] or files
    out = []
    for i in np.random.default_rng(seed).permutation(len(candidates)):
        try:
            out.append(images.load_image(candidates[i], image_size))
        except images.ImageError as e:
            warnings.warn(f"natural images: skipping unreadable {candidates[i]}: {e}", stacklevel=3)
        if len(out) == count:
            break
    if not out:
        raise NaturalImagesError(f"anomaly.natural_source: no readable image under {path!r}")
    return np.stack(out)


def skimage_photo_files():
    """The files of scikit-image's data folder the `skimage` source uses, sorted by name."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise NaturalImagesError(
            "anomaly.natural_source='skimage' needs scikit-image, which is not installed: "
            "`pip install scikit-image`, or use anomaly.natural_source='procedural' or 'dir:PATH'"
        )
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(p for p in folder.glob("*.*") if p.stem in SKIMAGE_PHOTOS and p.is_file())
    if not files:
        raise NaturalImagesError(
            f"anomaly.natural_source='skimage': none of the photographs {SKIMAGE_PHOTOS} is in "
            f"{folder}; use anomaly.natural_source='procedural' or 'dir:PATH'"
        )
    return files


def _random_view(rng, photo, image_size):
    """A random square crop of `photo` (side from min(short side, image_size / 2) to the short
    side, so at most a 2x upscale), randomly mirrored and turned by a multiple of 90 degrees."""
    width, height = photo.size
    short = min(width, height)
    side = int(rng.integers(min(short, image_size // 2), short + 1))
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    view = photo.crop((x, y, x + side, y + side))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
    k = int(rng.integers(0, 4))
    return view.transpose(turns[k - 1]) if k else view


def _bank_from_skimage(image_size, count, seed):
    """The first min(count, #photos) entries are whole photographs (a seeded order), resized to
    the square; the rest, up to `count`, are `_random_view`s of the photographs in turn."""
    files = skimage_photo_files()
    rng = np.random.default_rng([seed, 5417])
    order = rng.permutation(len(files))
    photos = {}
    out = []
    for i in range(count):
        path = files[order[i % len(files)]]
        if path not in photos:
            try:
                with Image.open(path) as img:
                    photos[path] = img.convert("RGB")
            except OSError as e:
                raise NaturalImagesError(f"anomaly.natural_source='skimage': {path}: {e}") from e
        view = photos[path] if i < len(files) else _random_view(rng, photos[path], image_size)
        view = view.resize((image_size, image_size), Image.Resampling.BILINEAR)
        out.append(np.asarray(view, np.uint8))
    return np.stack(out)


def _network_available(host="storage.googleapis.com", port=443, timeout=3.0):
    """True when a TCP connection to `host` opens within `timeout` seconds (DNS included)."""

    def connect():
        socket.create_connection((host, port), timeout=timeout).close()

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(connect).result(timeout=timeout) is None
    except Exception:  # any failure means: no usable network
        return False
    finally:
        pool.shutdown(wait=False)


def _bank_from_tfds(name, image_size, count, seed, data_dir):
    where = f"anomaly.natural_source: tfds dataset {name!r}"
    hint = "use anomaly.natural_source='dir:PATH' (a folder of images) or 'procedural'"
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        prepared = builder.is_prepared()
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0]  # the not-found message lists all
        raise NaturalImagesError(
            f"{where} is unavailable ({type(e).__name__}: {reason}); {hint}"
        ) from e
    if not prepared:
        if not _network_available():
            raise NaturalImagesError(
                f"{where} is not prepared locally and could not be downloaded (no network); {hint}"
            )
        try:
            builder.download_and_prepare()
        except Exception as e:
            no_tf = importlib.util.find_spec("tensorflow") is None
            note = " (TensorFlow, which some datasets need, is not installed)" if no_tf else ""
            raise NaturalImagesError(
                f"{where} could not be downloaded and prepared{note} "
                f"({type(e).__name__}: {e}); {hint}"
            ) from e
    source = builder.as_data_source(split="train")
    out = []
    for i in np.random.default_rng(seed).permutation(len(source))[:count]:
        example = source[int(i)]
        if not isinstance(example, dict) or "image" not in example:
            raise NaturalImagesError(f"{where} has no 'image' feature")
        image = np.asarray(example["image"], np.uint8)
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
        out.append(np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR)))
    if not out:
        raise NaturalImagesError(f"{where} has no images in its train split")
    return np.stack(out)


def natural_bank(source, image_size, count, seed, data_dir=None):
    """Returns up to `count` natural images for GAAGA, uint8 [K, image_size, image_size, 3].

    `source` (config `anomaly.natural_source`): "skimage" (the photographs shipped inside
    scikit-image; always `count` images: beyond the ~14 whole photographs, random square views of
    them), "procedural" (generated), "dir:PATH" (every image under PATH, recursively; unreadable
    files are skipped with a warning) or "tfds:NAME" (the train split of a TFDS dataset;
    `data_dir` is its TFDS data dir). For dir and tfds, when more than `count` images exist a
    seeded random subset is used; fewer give a smaller bank.
    """
    if source == "skimage":
        return _bank_from_skimage(image_size, count, seed)
    if source == "procedural":
        return synthetic.natural_images(count, image_size, seed)
    if source.startswith("dir:"):
        return _bank_from_dir(source[4:], image_size, count, seed)
    if source.startswith("tfds:"):
        return _bank_from_tfds(source[5:], image_size, count, seed, data_dir)
    raise NaturalImagesError(
        f"anomaly.natural_source must be one of {SOURCES_HELP}, got {source!r}"
    )


def bank_for_config(config):
    """`natural_bank` with the source, image size, bank size and seed of a training config."""
    a = config.anomaly
    return natural_bank(a.natural_source, config.data.image_size, a.bank_size, config.train.seed)
