"""Writes a copy of an MVTec-layout dataset already resized the way the loader resizes it.

    python scripts/resize_copy.py ../shared/datasets/magnetic_tile runs/mt256 --image_size 256

A machine that must receive the data over a small transfer (the device machine takes 64 MiB)
gets the images at their loaded size: `data.image_size` on the long side (`keep_aspect`) or
S x S (`square`). Loading the copy with the same `data.image_size` and `data.resize` gives the
same arrays as loading the original (PIL returns an image resized to its own size unchanged),
which `--check` verifies. Masks (any file under a `ground_truth` folder) are binarised and
resized with nearest neighbour as `images.load_mask` does, and written as 0/255.
"""

import argparse
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cmaae_jax import errors, images  # noqa: E402


def _copy_one(src, dst, image_size, resize):
    if not src.name.lower().endswith(images.IMAGE_EXTENSIONS):
        shutil.copyfile(src, dst)
    elif "ground_truth" in src.parts:
        h, w = images.scaled_size(images.original_size(src), image_size, resize)
        mask = images.load_mask(src, image_size, resize=resize)[:h, :w]
        Image.fromarray(mask * 255, mode="L").save(dst.with_suffix(".png"))
    else:
        img = images.read_resized(src, image_size, resize)
        if min(img.size) < images.MIN_SIDE:
            sys.exit(
                f"{src}: {img.width}x{img.height} at image_size {image_size} is below the "
                f"{images.MIN_SIDE}-pixel side a file must have; ship this dataset unresized"
            )
        img.save(dst.with_suffix(".png"))


def resize_copy(src_root, dst_root, image_size, resize):
    src_root, dst_root = pathlib.Path(src_root), pathlib.Path(dst_root)
    if not src_root.is_dir():
        sys.exit(f"error: {src_root}: no such folder")
    files = sorted(p for p in src_root.rglob("*") if p.is_file())
    for src in files:
        dst = dst_root / src.relative_to(src_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _copy_one(src, dst, image_size, resize)
    return len(files)


def check(src_root, dst_root, image_size, resize):
    """Loads both folders as the MVTec loader does and asserts every array is equal."""
    from cmaae_jax import datasets

    a = datasets.load_mvtec(src_root, "", image_size, 0.1, 0, resize)
    b = datasets.load_mvtec(dst_root, "", image_size, 0.1, 0, resize)
    for split in ("train", "val", "test"):
        sa, sb = a[split], b[split]
        for x, y in zip(sa.images, sb.images, strict=True):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(sa.masks, sb.masks, strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(sa.sizes, sb.sizes)
        np.testing.assert_array_equal(sa.labels, sb.labels)
    return {s: len(a[s].images) for s in ("train", "val", "test")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--image_size", type=int, required=True)
    ap.add_argument("--resize", default="keep_aspect", choices=images.RESIZE_MODES)
    ap.add_argument("--check", action="store_true", help="load both and compare the arrays")
    args = ap.parse_args()
    try:
        n = resize_copy(args.src, args.dst, args.image_size, args.resize)
        print(f"{n} files written under {args.dst}")
        if args.check:
            print("identical arrays:", check(args.src, args.dst, args.image_size, args.resize))
    except errors.UserError as e:  # a corrupt image or mask, a folder not in MVTec layout
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
