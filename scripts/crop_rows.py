"""Copies an MVTec-layout tree with every image and mask cropped to a band of rows.

    python scripts/crop_rows.py runs/wide33/square/cast_crack runs/wide33/data/cast_crack \
        --top 205 --height 230

Makes wide images out of square ones (docs/results/wide33/PLAN.md): every PNG under the source
folder (training and test images, `ground_truth` masks) is cropped to rows
[top, top + height) and written at the same relative path; the masks stay aligned with
their images. An existing target is refused.
"""

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image


def crop_tree(source: pathlib.Path, target: pathlib.Path, top: int, height: int) -> int:
    """Writes the cropped copy; returns the number of images written."""
    if target.exists():
        sys.exit(f"{target} exists: remove it or choose another target")
    count = 0
    for src in sorted(source.rglob("*.png")):
        array = np.asarray(Image.open(src))
        if array.shape[0] < top + height:
            sys.exit(f"{src}: {array.shape[0]} rows, fewer than top + height = {top + height}")
        dst = target / src.relative_to(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array[top : top + height]).save(dst)
        count += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=pathlib.Path)
    parser.add_argument("target", type=pathlib.Path)
    parser.add_argument("--top", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    args = parser.parse_args()
    print(crop_tree(args.source, args.target, args.top, args.height), "images written")


if __name__ == "__main__":
    main()
