"""How much of stage 2's training sees a GAAGA paste, for a canvas geometry (RESULTS.md).

    python scripts/paste_coverage.py --image_size 512 --patch_size 256 --valid 205x512,512x512
    python scripts/paste_coverage.py --image_size 256 --patch_size 128 --valid 187x256,100x256

For each valid size (h x w of an image in its keep_aspect canvas) it pastes GAAGA anomalies
into random images exactly as the training step does (`gaaga.synthesize`, `paste_shape`), once
placed on the image (the step's placement, each image's valid size passed) and once over the
whole canvas (no sizes: how pastes were placed before they were kept on the image), then takes
the step's 64-pixel crops (`patches.random_crops`, `--crops` per image, `--focus_crops` of them
placed on the pastes) and prints: the share of pasted pixels that lie on the image, the share
of crops that hold a pasted pixel, and the share whose pixels are at least 5% pasted.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from cmaae_jax import gaaga, patches


def coverage(size, patch, valid_hw, shape, crops, focus_share, placed, batch=64, reps=4):
    """(pasted share on the image, crops holding a paste, crops >= 5% pasted), averaged."""
    rng = np.random.default_rng(0)
    limits = jnp.tile(jnp.asarray(valid_hw, jnp.int32), (batch, 1))
    on_image = np.zeros((size, size), bool)
    on_image[: valid_hw[0], : valid_hw[1]] = True
    count = int(round(focus_share * crops))
    rows = []
    for r in range(reps):
        normal = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
        bank = jnp.asarray(rng.integers(0, 256, (4, size, size, 3), np.uint8))
        key = jax.random.key(r)
        anomalous, _, mask = gaaga.synthesize(
            key, normal, bank, patch, 3.0, shape, limits if placed else None
        )
        m = np.asarray(mask)
        focus = (mask, count) if count else None
        _, crops_mask = patches.random_crops(
            jax.random.fold_in(key, 1), anomalous, crops, 64, mask, limits_Nx2=limits, focus=focus
        )
        share = np.asarray(crops_mask).reshape(batch * crops, -1).mean(1)
        rows.append(
            ((m & on_image).sum() / max(m.sum(), 1), (share > 0).mean(), (share >= 0.05).mean())
        )
    return np.mean(rows, 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image_size", type=int, default=512)
    p.add_argument("--patch_size", type=int, default=256)
    p.add_argument("--valid", default="205x512,512x512", help="comma-separated HxW")
    p.add_argument("--shape", default="varied", choices=gaaga.PASTE_SHAPES)
    p.add_argument("--crops", type=int, default=16)
    p.add_argument("--focus_crops", type=float, default=0.0)
    args = p.parse_args()
    head = (
        "valid h x w",
        "placement",
        "pasted on image",
        "crops with a paste",
        "crops >=5% pasted",
    )
    print("| " + " | ".join(head) + " |")
    print("|---|---|---:|---:|---:|")
    for item in args.valid.split(","):
        hw = tuple(int(v) for v in item.split("x"))
        for placed in (False, True):
            on, any_, five = coverage(
                args.image_size,
                args.patch_size,
                hw,
                args.shape,
                args.crops,
                args.focus_crops,
                placed,
            )
            name = "on the image" if placed else "whole canvas"
            print(f"| {hw[0]} x {hw[1]} | {name} | {on:.3f} | {any_:.3f} | {five:.3f} |")


if __name__ == "__main__":
    main()
