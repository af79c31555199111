"""Where a defect's pixels score against their own image's median (map_options.py dumps).

    python scripts/defect_interiors.py /tmp/maps/varied_s5.pkl

Per defect type, over the type's test images: the 10th / 50th / 90th percentile of (median
score inside the mask) / (image median), the share of defect pixels scoring below their
image's median, and the defect's brightness relative to the rest of the image.
"""

import pickle
import sys

import numpy as np


def main(path):
    with open(path, "rb") as fh:
        test = pickle.load(fh)["test"]
    for t in sorted(set(test["types"]) - {"good"}):
        inside, below, bright = [], [], []
        rows = zip(test["maps"], test["masks"], test["types"], test["images"], strict=True)
        for m, mask, ty, im in rows:
            mask = np.asarray(mask) > 0
            if ty != t or not mask.any():
                continue
            med = np.median(m)
            inside.append(np.median(m[mask]) / med)
            below.append(np.mean(m[mask] < med))
            im = np.asarray(im, np.float64)
            bright.append(im[mask].mean() / im[~mask].mean())
        p = lambda v: np.round(np.percentile(v, [10, 50, 90]), 2)  # noqa: E731
        print(
            f"{t}: {len(inside)} images; inside / image median {p(inside)}; "
            f"share below the median {np.mean(below):.2f}; brightness ratio {p(bright)}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
