"""Natural images for GAAGA, loaded once on the host (config `anomaly.natural_source`).

Owns the `anomaly.natural_source` option (`is_source`, `SOURCES_HELP`), `natural_bank` (the
bank of natural images whose crops GAAGA pastes as anomalies: procedurally generated pictures, a
folder of images or a TFDS dataset), `bank_for_config` (the same, with the settings a training
config gives) and `NaturalImagesError`. The on-device synthesis that uses the bank is
`cmaae_jax.gaaga`.
"""

import concurrent.futures
import importlib.util
import pathlib
import socket
import warnings

import numpy as np

from cmaae_jax import errors, images, synthetic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SOURCES_HELP = "procedural, dir:PATH or tfds:NAME"  # the forms `is_source` accepts


class NaturalImagesError(errors.UserError, ValueError):
    """An `anomaly.natural_source` that gives no usable images; the message says why."""


def is_source(source):
    """True when `source` has a form `natural_bank` reads (loading it may still fail)."""
    return source == "procedural" or source.startswith("dir:") or source.startswith("tfds:")


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
        from PIL import Image

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

    `source` (config `anomaly.natural_source`): "procedural" (generated), "dir:PATH" (every image
    under PATH, recursively; unreadable files are skipped with a warning) or "tfds:NAME" (the
    train split of a TFDS dataset; `data_dir` is its TFDS data dir). When more than `count`
    images exist a seeded random subset is used; fewer give a smaller bank.
    """
    if source == "procedural":
        return synthetic.natural_images(count, image_size, seed)
    if source.startswith("dir:"):
        return _bank_from_dir(source[4:], image_size, count, seed)
    if source.startswith("tfds:"):
        return _bank_from_tfds(source[5:], image_size, count, seed, data_dir)
    raise NaturalImagesError(
        f"anomaly.natural_source must be 'procedural', 'dir:PATH' or 'tfds:NAME', got {source!r}"
    )


def bank_for_config(config):
    """`natural_bank` with the source, image size, bank size and seed of a training config."""
    a = config.anomaly
    return natural_bank(a.natural_source, config.data.image_size, a.bank_size, config.train.seed)
