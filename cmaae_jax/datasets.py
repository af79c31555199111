"""Dataset readers: MVTec AD, DAGM 2007 and plain-folder layouts, loaded into memory.

Owns the `data.format` dispatcher `load_splits(config)` (and its option tuple `FORMATS`), its
train-only twins `load_train(config)` (training decodes nothing else) and, listing without
decoding, `list_train_entries(config)` (`data.stream`), and the
per-layout loaders `load_mvtec`, `load_dagm`, `load_folder`; the layouts themselves (listing,
`Split`, `DatasetError`) are owned by `cmaae_jax.layouts`, the TFDS path by
`cmaae_jax.tfds_builders`. Every loader returns `dict(train=Split, val=Split, test=Split)`: train
and val are disjoint slices of the good training images (val, a seeded random `val_fraction` of
them, calibrates the threshold), test holds good and defective images with their masks, all
resized as `data.resize` says (`cmaae_jax.images`; TFDS: square only). Files
are read in sorted order; hidden files are ignored, files that are not images are skipped with
a warning.
"""

import os

from cmaae_jax import images, layouts
from cmaae_jax.layouts import DatasetError  # re-exported: evaluate and launch catch it here

FORMATS = ("mvtec", "dagm", "folder", "synthetic")


def _load(listing, image_size, val_fraction, seed, resize):
    train, test, has_masks = listing
    train, val = layouts.split_train_val(train, val_fraction, seed)
    return {
        "train": layouts.read_entries(train, image_size, resize=resize),
        "val": layouts.read_entries(val, image_size, resize=resize),
        "test": layouts.read_entries(test, image_size, has_masks, resize),
    }


def load_mvtec(root, category, image_size, val_fraction, seed, resize="square"):
    """Loads an MVTec AD category (category "" reads `root` itself as the category folder)."""
    return _load(layouts.list_mvtec(root, category), image_size, val_fraction, seed, resize)


def load_dagm(root, category, image_size, val_fraction, seed, resize="square"):
    """Loads one DAGM 2007 class; `category` is 'Class7', '7' or 7."""
    return _load(layouts.list_dagm(root, category), image_size, val_fraction, seed, resize)


def load_folder(root, image_size, val_fraction, seed, resize="square"):
    """Loads a plain `good/ [defective/ masks/ test_good/]` folder tree."""
    return _load(layouts.list_folder(root), image_size, val_fraction, seed, resize)


def _resize(data):
    return data.get("resize", "square")  # config.json files written before it: square


def _check_source(data):
    """The checks every reader of `config.data` shares: a known format and a root."""
    fmt = data.format
    if fmt not in FORMATS:
        raise DatasetError(f"data.format={fmt!r} is unknown; expected one of {'|'.join(FORMATS)}")
    if not data.root:
        raise DatasetError(f"data.root is empty; set --config.data.root for data.format={fmt}")


def _list_files(config):
    """`(train_entries, test_entries, has_masks)` of the folder layout `data.format` names;
    `synthetic` first writes its MVTec tree when it is missing."""
    data, seed = config.data, config.train.seed
    fmt, root, category = data.format, data.root, data.category
    if fmt == "synthetic":
        if not os.path.isdir(os.path.join(root, category, "train", "good")):
            from cmaae_jax import synthetic

            num_train, num_test = data.synthetic_num_train, data.synthetic_num_test
            synthetic.write_mvtec_tree(root, category, num_train, num_test, seed, data.image_size)
        fmt = "mvtec"
    if fmt == "mvtec":
        return layouts.list_mvtec(root, category)
    if fmt == "dagm":
        return layouts.list_dagm(root, category)
    return layouts.list_folder(root)


def load_splits(config):
    """Loads dict(train, val, test) of Splits as `config.data` says."""
    data = config.data
    fmt, root, category, size = data.format, data.root, data.category, data.image_size
    val_fraction, seed, resize = config.eval.val_fraction, config.train.seed, _resize(data)
    _check_source(data)
    if data.get("use_tfds", False):
        if fmt not in ("mvtec", "dagm"):
            raise DatasetError(f"data.use_tfds works with data.format mvtec|dagm, not {fmt!r}")
        if resize != "square":
            raise DatasetError(
                f"data.use_tfds stores square images; data.resize={resize!r} is not supported "
                f"with it yet: set data.use_tfds=False (or data.resize=square)"
            )
        from cmaae_jax import tfds_builders

        data_dir = data.get("tfds_data_dir", "") or None
        return tfds_builders.load_tfds(fmt, root, category, size, val_fraction, seed, data_dir)
    return _load(_list_files(config), size, val_fraction, seed, resize)


def list_train_entries(config):
    """The `layouts.Entry`s of the train split `load_splits` would decode (the same files, in
    the same order), listed without reading any image: what `data.stream` trains from."""
    _check_source(config.data)
    if config.data.get("use_tfds", False):
        raise DatasetError("data.stream reads image files: set data.use_tfds=False to use it")
    train, _, _ = _list_files(config)
    return layouts.split_train_val(train, config.eval.val_fraction, config.train.seed)[0]


def load_train(config):
    """The train Split of `load_splits(config)` (the same images, in the same order), decoded
    without reading the val and test images: what training needs. TFDS: `load_splits`'s."""
    if config.data.get("use_tfds", False):
        return load_splits(config)["train"]
    entries = list_train_entries(config)
    return layouts.read_entries(entries, config.data.image_size, resize=_resize(config.data))


def check_eval_files(config) -> None:
    """Reads the headers of the held-out and test images and masks that evaluation decodes
    after training: an unreadable file, or a mask of another size than its image, fails
    before training instead of after it (naming the file). TFDS: nothing to check here."""
    if config.data.get("use_tfds", False):
        return
    _check_source(config.data)
    train, test, _ = _list_files(config)
    val = layouts.split_train_val(train, config.eval.val_fraction, config.train.seed)[1]
    for entry in (*val, *test):
        try:
            images.check_pair(entry.path, entry.mask_path)
        except images.ImageError as e:
            raise DatasetError(str(e)) from e
