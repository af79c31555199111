"""Dataset layouts: what a dataset tree must look like, and reading its listed files.

Owns `DatasetError`, the `Split` (an in-memory split) and `Entry` (one listed example) records,
the listers of the MVTec AD, DAGM 2007 and plain-folder layouts (`list_mvtec`, `list_dagm`,
`list_folder`; each returns `(train_entries, test_entries, has_masks)`), the seeded train/val
split of the good training entries (`split_train_val`) and the threaded decoding of entries into
a Split (`read_entries`; `data.resize=keep_aspect` Splits hold images of different shapes and
their valid sizes). Files are listed in sorted order; hidden files are ignored, files that
are not images are skipped with a warning. `cmaae_jax.datasets` (the in-memory readers) and
`cmaae_jax.tfds_builders` (the TFDS builders) both build on this module.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np

from cmaae_jax import errors
from cmaae_jax import images as images_lib

NUM_WORKERS = 4
_MVTEC_LAYOUT = "<root>/<category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png}"
_DAGM_LAYOUT = "<root>/Class<N>/{Train,Test}/*.PNG with {Train,Test}/Label/<stem>_label.PNG"
_FOLDER_LAYOUT = "<root>/good/* [, <root>/defective/*, <root>/masks/<stem>_mask.png, test_good/*]"


class DatasetError(errors.UserError, ValueError):
    """A dataset that cannot be read; the message names the folder, file or setting."""


@dataclasses.dataclass
class Split:
    """One in-memory split.

    Attributes:
      images: uint8 [N, S, S, 3] (`data.resize=square`), or a list of N uint8 [H_i, W_i, 3]
        (`keep_aspect`: H_i, W_i multiples of 64, the scaled image reflect-padded bottom/right).
      masks: uint8 [N, S, S] or a list of N [H_i, W_i], in {0, 1}; zero for good images and in
        the padding.
      labels: int32 [N], 0 good, 1 defective.
      paths: the N image files.
      defect_types: N defect-type names, "good" for good images.
      has_masks: False when defective images came without masks (their masks are all zeros).
      sizes: int32 [N, 2], the valid (h, w) of each image before padding; None: the images'
        own (h, w) (square mode: all (S, S)).
    """

    images: np.ndarray | list
    masks: np.ndarray | list
    labels: np.ndarray
    paths: list[str]
    defect_types: list[str]
    has_masks: bool = True
    sizes: np.ndarray | None = None

    def __post_init__(self):
        if self.sizes is None:
            self.sizes = np.array([im.shape[:2] for im in self.images], np.int32).reshape(-1, 2)

    @property
    def num_images(self):
        return len(self.paths)

    def mask_known(self) -> np.ndarray:
        """[N] bool: image i has a ground-truth mask (normal images: their zero mask)."""
        return (np.asarray(self.labels) == 0) | bool(self.has_masks)

    @property
    def stacked(self) -> bool:
        """True when images and masks are single arrays (square mode)."""
        return isinstance(self.images, np.ndarray)

    def valid_map(self, i, array_HxWx___):
        """Image `i`'s (padded) map, mask or image cropped to its valid region [h_i, w_i, ...]."""
        h, w = self.sizes[i]
        return array_HxWx___[:h, :w]

    def select(self, idx):
        """The Split of the images at positions `idx`, in that order."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        take = (lambda a: a[idx]) if self.stacked else (lambda a: [a[i] for i in idx])
        return Split(
            take(self.images),
            take(self.masks),
            self.labels[idx],
            [self.paths[i] for i in idx],
            [self.defect_types[i] for i in idx],
            self.has_masks,
            self.sizes[idx],
        )

    def valid_groups(self, idx, maps):
        """Yields (positions, maps [G, h, w], masks [G, h, w]) cropped to the valid region,
        one group per valid size (first-seen order): `maps[j]` belongs to image `idx[j]`.
        Square mode gives one group holding every map as it is."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        groups = {}
        for j, i in enumerate(idx):
            groups.setdefault(tuple(int(v) for v in self.sizes[i]), []).append(j)
        for (h, w), js in groups.items():
            pos = idx[js]
            cropped = np.stack([np.asarray(maps[j])[:h, :w] for j in js])
            yield pos, cropped, np.stack([self.masks[i][:h, :w] for i in pos])


@dataclasses.dataclass(frozen=True)
class Entry:
    """One listed example: image file, mask file (None: no mask), label and defect type."""

    path: str
    mask_path: str | None
    label: int
    defect_type: str


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _subdirs(folder):
    names = sorted(os.listdir(folder))
    return [n for n in names if n[0] != "." and os.path.isdir(os.path.join(folder, n))]


def _require_dir(path, what, layout):
    if not os.path.isdir(path):
        raise DatasetError(f"{what} {path} not found; expected the layout {layout}")


def _good_entries(folder, what, layout):
    """Good entries of the images in `folder`; a missing or empty folder is a DatasetError."""
    _require_dir(folder, what, layout)
    entries = [Entry(p, None, 0, "good") for p in images_lib.list_image_files(folder)]
    if not entries:
        raise DatasetError(f"{what} {folder} holds no images")
    return entries


def _mask_index(folder, suffix):
    """Maps image stem -> mask path for the masks in `folder` named <stem><suffix> or <stem>."""
    index = {}
    for path in images_lib.list_image_files(folder) if os.path.isdir(folder) else ():
        stem = _stem(path)
        key = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        if key not in index or stem.endswith(suffix):
            index[key] = path
    return index


def _pair_masks(image_paths, mask_dir, suffix, defect_type):
    """Defective entries for `image_paths` with their masks `<mask_dir>/<stem><suffix>.*`.

    A defective image without a mask, or a mask without an image, is a DatasetError.
    """
    masks = _mask_index(mask_dir, suffix)
    entries = []
    for path in image_paths:
        if _stem(path) not in masks:
            expected = os.path.join(mask_dir, f"{_stem(path)}{suffix}.png")
            raise DatasetError(f"defective image {path} has no mask; expected {expected}")
        entries.append(Entry(path, masks[_stem(path)], 1, defect_type))
    orphans = sorted(set(masks) - {_stem(p) for p in image_paths})
    if orphans:
        mask, stem = masks[orphans[0]], orphans[0]
        raise DatasetError(f"mask {mask} has no image named {stem}.* to belong to")
    return entries


def list_mvtec(root, category):
    """Lists an MVTec AD tree; returns (train_entries, test_entries, has_masks)."""
    root = os.fspath(root)
    _require_dir(root, "dataset root", _MVTEC_LAYOUT)
    base = os.path.join(root, category) if category else root
    if not os.path.isdir(base):
        raise DatasetError(
            f"category folder {base} (data.category={category!r}) not found; categories under "
            f"{root}: {', '.join(_subdirs(root)) or 'none'}; expected the layout {_MVTEC_LAYOUT}"
        )
    good_dir = os.path.join(base, "train", "good")
    train = _good_entries(good_dir, "training folder", _MVTEC_LAYOUT)
    test_dir, gt_dir = os.path.join(base, "test"), os.path.join(base, "ground_truth")
    _require_dir(test_dir, "test folder", _MVTEC_LAYOUT)
    test, types = [], _subdirs(test_dir)
    for defect_type in types:
        paths = images_lib.list_image_files(os.path.join(test_dir, defect_type))
        if defect_type == "good":
            test += [Entry(p, None, 0, "good") for p in paths]
        else:
            test += _pair_masks(paths, os.path.join(gt_dir, defect_type), "_mask", defect_type)
    for defect_type in sorted(set(_subdirs(gt_dir) if os.path.isdir(gt_dir) else ()) - set(types)):
        if defect_type != "good":  # masks of a defect type that has no test folder
            _pair_masks([], os.path.join(gt_dir, defect_type), "_mask", defect_type)
    if not test:
        raise DatasetError(f"test folder {test_dir} holds no images")
    return train, test, True


def dagm_class_name(category):
    """'Class7', '7' or 7 -> 'Class7'."""
    text = str(category).strip()
    digits = text[5:] if text.lower().startswith("class") else text
    if not digits.isdigit():
        raise DatasetError(
            f"data.category={category!r} is not a DAGM class; expected 'Class7', '7' or 7"
        )
    return f"Class{int(digits)}"


def _list_dagm_part(folder):
    """Entries of one DAGM Train or Test folder, sorted: labelled images are defective."""
    label_dir = os.path.join(folder, "Label")
    labelled = set(_mask_index(label_dir, "_label"))
    paths = images_lib.list_image_files(folder)
    bad = _pair_masks([p for p in paths if _stem(p) in labelled], label_dir, "_label", "defective")
    good = [Entry(p, None, 0, "good") for p in paths if _stem(p) not in labelled]
    return sorted(good + bad, key=lambda e: e.path)


def list_dagm(root, category):
    """Lists a DAGM 2007 class; returns (train_entries, test_entries, has_masks).

    Train holds the good images of Train (its defective images are not used); test holds all of
    Test, in sorted file order.
    """
    root = os.fspath(root)
    _require_dir(root, "dataset root", _DAGM_LAYOUT)
    base = os.path.join(root, dagm_class_name(category))
    _require_dir(base, f"class folder (data.category={category!r})", _DAGM_LAYOUT)
    train_dir, test_dir = os.path.join(base, "Train"), os.path.join(base, "Test")
    for folder in (train_dir, test_dir):
        _require_dir(folder, "folder", _DAGM_LAYOUT)
    train = [e for e in _list_dagm_part(train_dir) if e.label == 0]
    if not train:
        raise DatasetError(f"training folder {train_dir} holds no good (unlabelled) images")
    return train, _list_dagm_part(test_dir), True


def list_folder(root):
    """Lists a plain folder tree; returns (train_entries, test_entries, has_masks)."""
    root = os.fspath(root)
    _require_dir(root, "dataset root", _FOLDER_LAYOUT)
    train = _good_entries(os.path.join(root, "good"), "good-image folder", _FOLDER_LAYOUT)
    test, has_masks = [], True
    if os.path.isdir(os.path.join(root, "test_good")):
        test += _good_entries(os.path.join(root, "test_good"), "test folder", _FOLDER_LAYOUT)
    defective_dir, mask_dir = os.path.join(root, "defective"), os.path.join(root, "masks")
    if os.path.isdir(defective_dir):
        paths = images_lib.list_image_files(defective_dir)
        if os.path.isdir(mask_dir):
            test += _pair_masks(paths, mask_dir, "_mask", "defective")
        else:
            has_masks = not paths
            test += [Entry(p, None, 1, "defective") for p in paths]
    return train, test, has_masks


def split_train_val(entries, val_fraction, seed):
    """Seeded random split of good training entries into (train, val), both in sorted order.

    val holds round(val_fraction * n) entries, at least 1 when val_fraction > 0 and n >= 2,
    and never all of them.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"eval.val_fraction={val_fraction} must be in [0, 1)")
    n = len(entries)
    num_val = max(int(round(val_fraction * n)), 1 if val_fraction > 0 else 0)
    num_val = min(num_val, max(n - 1, 0))
    val_idx = set(np.random.default_rng(seed).permutation(n)[:num_val].tolist())
    train = [e for i, e in enumerate(entries) if i not in val_idx]
    val = [e for i, e in enumerate(entries) if i in val_idx]
    return train, val


def read_entries(entries, image_size, has_masks=True, resize="square"):
    """Decodes `entries` (in parallel threads) into a Split, resized as `resize` says."""
    n, square = len(entries), resize == "square"
    split = Split(
        images=np.zeros((n, image_size, image_size, 3), np.uint8) if square else [None] * n,
        masks=np.zeros((n, image_size, image_size), np.uint8) if square else [None] * n,
        labels=np.array([e.label for e in entries], np.int32),
        paths=[e.path for e in entries],
        defect_types=[e.defect_type for e in entries],
        has_masks=has_masks,
        sizes=np.full((n, 2), image_size, np.int32),
    )

    def work(i):
        e = entries[i]
        pair = images_lib.load_pair(e.path, e.mask_path, image_size, resize)
        split.images[i], split.masks[i] = pair
        if not square:
            hw = images_lib.original_size(e.path)
            split.sizes[i] = images_lib.scaled_size(hw, image_size, resize)

    pool = concurrent.futures.ThreadPoolExecutor(NUM_WORKERS)
    try:
        list(pool.map(work, range(n)))
    except images_lib.ImageError as e:
        raise DatasetError(str(e)) from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return split
