"""TFDS builders for MVTec AD and DAGM 2007 that work without TensorFlow.

Owns the TFDS path of `data.use_tfds`: the builders `MvtecAd` and `Dagm2007`, their configs
and `load_tfds`. Neither dataset can be downloaded automatically: the builders read a manually
downloaded tree (the `manual_dir`) with the listers of `cmaae_jax.layouts`, and store resized
uint8 arrays (`tfds.features.Tensor(..., encoding='zlib')`) in ArrayRecord files, read back with
`builder.as_data_source()`. `tfds.features.Image` is not used: it needs TensorFlow to encode.

    splits = load_tfds("mvtec", "/data/mvtec_ad", "wood", 512, 0.1, seed=0, data_dir=None)

Stored splits: `train` (the good training images) and `test`; `load_tfds` takes the same
seeded validation slice out of train as the plain readers, so both paths give the same Splits.
Preparing is a one-time cost dominated by TFDS's single-threaded zlib compression (about 0.1 s
per image at 512 on two cores); later loads read the stored arrays back in threads. Images are
stored square (`data.resize=square`); `datasets.load_splits` refuses keep_aspect with TFDS.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cmaae_jax import images as images_lib
from cmaae_jax import layouts

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
    "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
DAGM_CLASSES = tuple(f"Class{i}" for i in range(1, 11))
DEFAULT_IMAGE_SIZE = 512
_DAGM_HOMEPAGE = "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection"
_CHUNK = 32  # images decoded in parallel at a time while generating
# TFDS finds a builder's source file through `importlib_resources`, which it does not install
# (it comes with etils[epath]); giving the path directly avoids that lookup.
_CODE_PATH = epath.Path(__file__)


@dataclasses.dataclass(eq=False)
class AnomalyConfig(tfds.core.BuilderConfig):
    """One category (MVTec) or class (DAGM) at one image size."""

    category: str = ""
    image_size: int = DEFAULT_IMAGE_SIZE


def _features(size):
    tensor = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib")
    return tfds.features.FeaturesDict(
        {
            "image": tensor((size, size, 3)),
            "mask": tensor((size, size)),
            "label": tfds.features.ClassLabel(names=["good", "defective"]),
            "defect_type": tfds.features.Text(),
            "path": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int32),  # position in the sorted listing
        }
    )


def _examples(entries, size):
    """Yields (key, example) for `entries`, decoding a chunk at a time in threads."""
    load = lambda e: images_lib.load_pair(e.path, e.mask_path, size)
    with concurrent.futures.ThreadPoolExecutor(layouts.NUM_WORKERS) as pool:
        for start in range(0, len(entries), _CHUNK):
            chunk = entries[start : start + _CHUNK]
            decoded = zip(chunk, pool.map(load, chunk), strict=True)
            for i, (e, (image, mask)) in enumerate(decoded, start):
                example = {"image": image, "mask": mask, "label": e.label, "index": i}
                yield i, {**example, "defect_type": e.defect_type, "path": e.path}


def _info(builder, homepage):
    return tfds.core.DatasetInfo(
        builder=builder,
        description=builder.__doc__,
        features=_features(builder.builder_config.image_size),
        homepage=homepage,
    )


def _split_generators(builder, lister, manual_dir):
    config = builder.builder_config
    train, test, _ = lister(os.fspath(manual_dir), config.category)
    return {
        "train": _examples(train, config.image_size),
        "test": _examples(test, config.image_size),
    }


class MvtecAd(tfds.core.GeneratorBasedBuilder):
    """MVTec AD (or any tree in its layout), one category per config, resized uint8 arrays."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = _CODE_PATH
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MVTec AD cannot be downloaded automatically (its licence must be accepted on its homepage).
    Download and extract it, and pass the extracted folder as the manual dir
    (`load_tfds(..., root=...)` or `tfds.download.DownloadConfig(manual_dir=...)`). Layout:
    <manual_dir>/<category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png}.
    A config with category "" reads <manual_dir> itself as the category folder.
    """
    BUILDER_CONFIGS = [AnomalyConfig(name=c, category=c) for c in MVTEC_CATEGORIES]

    def _info(self):
        return _info(self, "https://www.mvtec.com/company/research/datasets/mvtec-ad")

    def _split_generators(self, dl_manager):
        return _split_generators(self, layouts.list_mvtec, dl_manager.manual_dir)

    def _generate_examples(self, entries, image_size):
        yield from _examples(entries, image_size)


class Dagm2007(tfds.core.GeneratorBasedBuilder):
    """DAGM 2007 (weakly supervised defect classes), one class per config."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path = _CODE_PATH
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    DAGM 2007 cannot be downloaded automatically. Download the class archives from its
    homepage, extract them, and pass the folder that holds Class1 ... Class10 as the manual
    dir. Layout: <manual_dir>/Class<N>/{Train,Test}/*.PNG with {Train,Test}/Label/*_label.PNG.
    """
    BUILDER_CONFIGS = [AnomalyConfig(name=c.lower(), category=c) for c in DAGM_CLASSES]

    def _info(self):
        return _info(self, _DAGM_HOMEPAGE)

    def _split_generators(self, dl_manager):
        return _split_generators(self, layouts.list_dagm, dl_manager.manual_dir)

    def _generate_examples(self, entries, image_size):
        yield from _examples(entries, image_size)


def builder_config(fmt, root, category, image_size):
    """The config name (a predefined one) or a custom AnomalyConfig for this data."""
    if fmt == "dagm":
        category = layouts.dagm_class_name(category)
        name = category.lower()
    elif category:
        name = re.sub(r"[^\w.+-]", "_", category)
    else:  # a category folder given directly: keep one prepared dataset per folder
        digest = hashlib.sha1(os.path.abspath(os.fspath(root)).encode()).hexdigest()[:10]
        name = f"dir_{digest}"
    if image_size != DEFAULT_IMAGE_SIZE:
        name = f"{name}_{image_size}"
    builder_cls = Dagm2007 if fmt == "dagm" else MvtecAd
    if name in builder_cls.builder_configs:
        return name
    return AnomalyConfig(name=name, category=category, image_size=image_size)


def make_builder(fmt, root, category, image_size, data_dir=None):
    """Returns the (not yet prepared) TFDS builder for this data."""
    if fmt not in ("mvtec", "dagm"):
        raise layouts.DatasetError(f"no TFDS builder for data.format={fmt!r}; use mvtec|dagm")
    builder_cls = Dagm2007 if fmt == "dagm" else MvtecAd
    config = builder_config(fmt, root, category, image_size)
    return builder_cls(config=config, data_dir=data_dir, file_format="array_record")


def _to_split(source, image_size):
    """Reads a whole ArrayRecord data source into a Split, in the original listing order."""
    with concurrent.futures.ThreadPoolExecutor(layouts.NUM_WORKERS) as pool:
        records = list(pool.map(source.__getitem__, range(len(source))))  # zlib frees the GIL
    records.sort(key=lambda r: r["index"])
    n = len(records)
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
    return layouts.Split(
        images=np.stack([r["image"] for r in records]).reshape(n, image_size, image_size, 3),
        masks=np.stack([r["mask"] for r in records]).reshape(n, image_size, image_size),
        labels=np.array([r["label"] for r in records], np.int32),
        paths=[text(r["path"]) for r in records],
        defect_types=[text(r["defect_type"]) for r in records],
    )


def _take(split, idx):
    return layouts.Split(
        images=split.images[idx],
        masks=split.masks[idx],
        labels=split.labels[idx],
        paths=[split.paths[i] for i in idx],
        defect_types=[split.defect_types[i] for i in idx],
    )


def load_tfds(fmt, root, category, image_size, val_fraction, seed, data_dir=None):
    """Prepares (once) and reads the TFDS dataset; returns dict(train, val, test) of Splits.

    Args:
      fmt: "mvtec" or "dagm".
      root: the manually downloaded dataset folder (only read while preparing).
      category: MVTec category ("" for a category folder given as root) or DAGM class.
      image_size: side of the stored square images.
      val_fraction: share of the good training images held out as val.
      seed: seed of the val selection (the same selection as the plain readers make).
      data_dir: where TFDS keeps prepared datasets (None: TFDS's default).
    """
    builder = make_builder(fmt, root, category, image_size, data_dir)
    if not builder.is_prepared():
        lister = layouts.list_dagm if fmt == "dagm" else layouts.list_mvtec
        lister(root, category)  # a clear DatasetError for a missing or malformed tree
        manual_dir = os.path.abspath(os.fspath(root))
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except images_lib.ImageError as e:
            raise layouts.DatasetError(str(e)) from e
    sources = builder.as_data_source()
    train = _to_split(sources["train"], image_size)
    test = _to_split(sources["test"], image_size)
    train_idx, val_idx = layouts.split_train_val(list(range(train.num_images)), val_fraction, seed)
    return {"train": _take(train, train_idx), "val": _take(train, val_idx), "test": test}
