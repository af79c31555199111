"""Where a trained run's held-out NORMAL images score high: near the image border or inside.

    python scripts/normal_hotspots.py runs/mt256_cpu/cmaae_s0 --border 16

Label-free (no test image, no mask): the run's held-out normal images (`eval.val_fraction` of
train/good) are mapped as `launch/predict.py` maps images, with the score fields, the
reference and the threshold that the run's evaluation recorded (evaluate it first). For the
pixels at or above a few levels (quantiles of the pooled held-out scores, and that
label-free threshold) it prints their share of all held-out pixels, the share of them within
`--border` pixels of their image's border against the border's share of the area, the sides
they lie at, and the quantiles of the interior alone. A normal tail concentrated at the
border says that false alarms come from the image edges (e.g. the physical edges of a part),
which raise the label-free thresholds and the normal images' image scores (their maximum).
"""

import argparse

import numpy as np

from cmaae_jax import datasets, devices, inference, predict, reference
from cmaae_jax import workdir as workdir_lib

SIDES = ("top", "bottom", "left", "right")


def border_distance(h: int, w: int):
    """(distance of every pixel to the nearest image side [h, w], index of that side)."""
    yy, xx = np.mgrid[:h, :w]
    to_side = np.stack([yy, h - 1 - yy, xx, w - 1 - xx])
    return to_side.min(axis=0), to_side.argmin(axis=0)


def report(maps, levels: dict, border: int) -> None:
    """Prints, for each named level, where the normal pixels at or above it lie."""
    near = [border_distance(*m.shape) for m in maps]
    area = sum(int((d < border).sum()) for d, _ in near) / sum(m.size for m in maps)
    for name, level in levels.items():
        above = edge = 0
        by_side = np.zeros(len(SIDES), np.int64)
        for m, (d, side) in zip(maps, near, strict=True):
            hot = m >= level
            above += int(hot.sum())
            edge += int((hot & (d < border)).sum())
            by_side += np.bincount(side[hot & (d < border)], minlength=len(SIDES))
        share = above / sum(m.size for m in maps)
        print(
            f"{name} ({level:.4g}): {share:.4f} of held-out pixels; "
            f"{edge / max(above, 1):.3f} of them within {border} px of the border "
            f"(the border is {area:.3f} of the area); sides "
            + ", ".join(f"{s} {n}" for s, n in zip(SIDES, by_side, strict=True))
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--border", type=int, default=16, help="border width in map pixels")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.99, 0.999])
    args = parser.parse_args()
    devices.set_cpu_devices(-1)  # the launchers' virtual CPU devices
    config = workdir_lib.load_scoring_config(args.workdir)  # the score fields it was evaluated with
    _, variables = inference.restore_variables(config, args.workdir)
    val = datasets.load_splits(config)["val"]
    ref = reference.load(workdir_lib.eval_dir(args.workdir) / reference.FILE)
    scorer = inference.Scorer(config, variables, components=reference.parts(ref) > 1)
    maps = inference.valid_maps(scorer, val)
    maps = [np.asarray(m, np.float32) for m in reference.apply(ref, maps)]
    pooled = np.concatenate([m.ravel() for m in maps])
    levels = {f"quantile {q}": float(np.quantile(pooled, q)) for q in args.quantiles}
    levels["label-free threshold"] = predict.find_threshold(args.workdir, None)
    print(f"{args.workdir}: {len(maps)} held-out normal images, median {np.median(pooled):.4g}")
    report(maps, levels, args.border)
    b = args.border
    inner = np.concatenate([m[b:-b, b:-b].ravel() for m in maps if min(m.shape) > 2 * b])
    print(
        f"interior (beyond {b} px): "
        + ", ".join(f"quantile {q} {np.quantile(inner, q):.4g}" for q in args.quantiles)
    )


if __name__ == "__main__":
    main()
