"""MSFR's layer-1 residual weighted by its normal statistics, measured without retraining.

    python scripts/channel_residuals.py runs/study512b/varied/seed6 /tmp/maps/s6 --stat-images 32
    python scripts/map_options.py analyse /tmp/maps/s6_diag.pkl --sigmas 0 --normalize median \
        --reference none --quantiles 0.999          # likewise _plain, _full

MSFR at layer 1 (the default) is the mean over the 32 channels of (F - F')^2, every channel
weighted alike. Here the residual vector d = F - F' of each feature pixel is also scored
against its distribution on normal training images (the first `--stat-images` of the run's
train split, evenly spaced; never val or test images): `diag` divides each channel's square
by its normal mean square, `full` is the Mahalanobis distance (d - mu)^T S^-1 (d - mu) / C.
Each variant is written as a map_options.py dump (`<out>_<variant>.pkl`: val and test maps
cropped to each image's valid region), so `map_options.py analyse` scores it; `plain`
reproduces the run's own layer-1 map. No test mask is read here.
"""

import argparse
import os
import pickle

import numpy as np
from map_options import dump_fields

VARIANTS = ("plain", "diag", "full")


def _residual_fn(config):
    import jax

    from cmaae_jax import model, scoring

    net = model.from_config(config)
    stride = config.score.stride

    def residual(net, variables, x_1xHxWx3):
        rec = scoring.reconstruct(net, variables, x_1xHxWx3, stride)
        f = net.apply(variables, x_1xHxWx3, 1, method="features")[0]
        f_rec = net.apply(variables, rec, 1, method="features")[0]
        return (f - f_rec)[0]

    return jax.jit(lambda v, x: model.per_platform(net, residual, v, x))


def per_image(fn, variables, split, indices):
    """[(fn's output for the image's padded canvas, (H, W) canvas, (h, w) valid)] for each
    image of `split` at `indices` (here: d [h2, w2, C], the residual vectors)."""
    from cmaae_jax import images

    out = []
    for i in indices:
        crop = split.valid_map(i, split.images[i])
        canvas = images.pad_to(crop, images.padded_size(crop.shape[:2]))
        x = np.asarray(images.to_float(canvas[None]), np.float32)
        out.append((np.asarray(fn(variables, x)), canvas.shape[:2], crop.shape[:2]))
    return out


def write_dumps(out, splits, variant_maps):
    """Writes `<out>_<variant>.pkl` (map_options.py dumps) of the val and test splits, the
    maps of each variant from `variant_maps(split)` ({variant: [maps]})."""
    results = {}
    for name in ("val", "test"):
        split = splits[name]
        common = dump_fields(split)
        for v, maps in variant_maps(split).items():
            results.setdefault(v, {})[name] = dict(maps=maps, **common)
        print(f"{name}: {split.num_images} images", flush=True)
    for v, result in results.items():
        with open(f"{out}_{v}.pkl", "wb") as fh:
            pickle.dump(result, fh)


def _statistics(stat_residuals):
    """(mean square per channel, mean, inverse covariance) of the valid feature pixels."""
    vectors = []
    for d, (hh, ww), (h, w) in stat_residuals:
        fy, fx = d.shape[0] / hh, d.shape[1] / ww
        vectors.append(d[: int(np.ceil(h * fy)), : int(np.ceil(w * fx))].reshape(-1, d.shape[-1]))
    v = np.concatenate(vectors).astype(np.float64)
    mean_square = np.mean(v * v, axis=0)
    mu = v.mean(axis=0)
    cov = np.cov(v, rowvar=False)
    ridge = 1e-6 * np.trace(cov) / v.shape[1]  # keeps near-constant channels invertible
    return mean_square, mu, np.linalg.inv(cov + ridge * np.eye(v.shape[1]))


def _feature_score(d, variant, stats):
    mean_square, mu, inv_cov = stats
    if variant == "plain":
        return np.mean(d * d, axis=-1)
    if variant == "diag":
        return np.mean(d * d / mean_square, axis=-1)
    c = d.astype(np.float64) - mu
    return (np.einsum("...i,ij,...j->...", c, inv_cov, c) / d.shape[-1]).astype(np.float32)


def _to_map(q_hxw, canvas, valid):
    from cmaae_jax import msfr

    full = msfr.resize_bilinear(np.asarray(q_hxw, np.float32)[None], *canvas)[0]
    return np.asarray(full[: valid[0], : valid[1]], np.float32)


def dump(workdir, out, stat_images):
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    from cmaae_jax import datasets, inference
    from cmaae_jax import workdir as workdir_lib

    config = workdir_lib.load_config(workdir)
    _, variables = inference.restore_variables(config, workdir)
    splits = datasets.load_splits(config)
    fn = _residual_fn(config)
    train = splits["train"]
    picks = np.linspace(0, train.num_images - 1, min(stat_images, train.num_images)).astype(int)
    stats = _statistics(per_image(fn, variables, train, picks))
    print(
        f"statistics from {len(picks)} training images; channel mean squares "
        f"{stats[0].min():.3g}-{stats[0].max():.3g}",
        flush=True,
    )

    def variant_maps(split):
        res = per_image(fn, variables, split, range(split.num_images))
        return {
            v: [_to_map(_feature_score(d, v, stats), cv, vd) for d, cv, vd in res] for v in VARIANTS
        }

    write_dumps(out, splits, variant_maps)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("out", help="prefix: <out>_<variant>.pkl for each of " + ", ".join(VARIANTS))
    p.add_argument("--stat-images", type=int, default=32)
    a = p.parse_args()
    dump(a.workdir, a.out, a.stat_images)


if __name__ == "__main__":
    main()
