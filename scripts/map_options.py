"""Post-processing options of trained runs' maps, measured without retraining (RESULTS.md).

    python scripts/map_options.py dump runs/study12/full/seed0 /tmp/maps/full_seed0.pkl
    python scripts/map_options.py analyse /tmp/maps/full_seed0.pkl

`dump` scores the run's held-out normal images (val) and test images with its own config but
`score.normalize=none`, `score.scales=(1,)` (and `--method`), and pickles the maps cropped to
each image's valid region. `analyse` then compares, per defect type (its images plus every
normal test image): Gaussian smoothing of the map (sigma in pixels), per-image median
normalisation over the valid region, a per-position reference of the normal val maps
(mean subtracted, divided by the std, or both; resampled to each image's size), and label-free
threshold rules (quantiles of the val pixels, the largest val pixel, the median of the val
images' maxima). Nothing here looks at test masks to choose anything: every option is scored.
"""

import argparse
import os
import pickle

import numpy as np

TYPES = ("blowhole", "break", "crack", "fray")


def dump(workdir, out, method):
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    from cmaae_jax import datasets, inference
    from cmaae_jax import workdir as workdir_lib

    config = workdir_lib.load_config(workdir)
    with config.unlocked():
        config.score.normalize, config.score.scales, config.score.method = "none", (1,), method
    _, variables = inference.restore_variables(config, workdir)
    splits = datasets.load_splits(config)
    scorer = inference.Scorer(config, variables)
    result = {}
    for name in ("val", "test"):
        split = splits[name]
        maps = [None] * split.num_images
        for idx, batch in scorer.batches(split.images):
            for j, i in enumerate(idx):
                maps[i] = split.valid_map(i, batch[j]).astype(np.float32)
        masks = [split.valid_map(i, split.masks[i]) for i in range(split.num_images)]
        result[name] = dict(
            maps=maps, masks=masks, labels=np.asarray(split.labels), types=split.defect_types
        )
    with open(out, "wb") as fh:
        pickle.dump(result, fh)


def _resize(map_hxw, shape):
    from PIL import Image

    image = Image.fromarray(np.asarray(map_hxw, np.float32))
    return np.asarray(image.resize((shape[1], shape[0]), Image.BILINEAR))


def _reference(val_maps, mode, side=256):
    """A function map -> map applying the per-position reference `mode` of `val_maps`."""
    if mode == "none":
        return lambda m: m
    canvas = np.stack([_resize(v, (side, side)) for v in val_maps])
    mu, sd = canvas.mean(0), canvas.std(0)
    sd = np.maximum(sd, 0.1 * np.median(sd))

    def apply(m):
        mu_i, sd_i = _resize(mu, m.shape), _resize(sd, m.shape)
        centred = m - mu_i if mode in ("mean", "meanstd") else m
        return centred / sd_i if mode in ("std", "meanstd") else centred

    return apply


def _prepare(m, sigma, normalize):
    from scipy import ndimage

    m = ndimage.gaussian_filter(m, sigma, mode="reflect") if sigma > 0 else m
    return m / (np.median(m) + 1e-12) if normalize == "median" else m


def _thresholds(val_maps):
    from cmaae_jax import calibration

    pooled = np.concatenate([v.ravel() for v in val_maps])
    return {
        "q0.999": calibration.threshold_from_normal(pooled, 0.999),
        "q0.9999": calibration.threshold_from_normal(pooled, 0.9999),
        "val max": float(pooled.max()),
        "median of val maxima": float(np.median([v.max() for v in val_maps])),
    }


def score(data, sigma, normalize, reference):
    """{"aupro"|"f1max"|rule: {type: value}} of one combination of options."""
    from cmaae_jax import metrics

    val = [_prepare(m, sigma, normalize) for m in data["val"]["maps"]]
    post = _reference(val, reference)
    val = [post(v) for v in val]
    rules = _thresholds(val)
    test = data["test"]
    acc = metrics.PerTypeAccumulator(test["types"], test["labels"], tuple(rules.values()))
    for i, m in enumerate(test["maps"]):
        amap = post(_prepare(m, sigma, normalize))
        acc.update(
            amap[None], test["masks"][i][None], [test["types"][i]], test["labels"][i : i + 1]
        )
    unthresholded = acc.result(None)
    row = {
        "aupro": {t: r["pixel_aupro"] for t, r in unthresholded.items()},
        "f1max": {t: r["pixel_f1_max"] for t, r in unthresholded.items()},
    }
    for name, value in rules.items():
        row[name] = {t: r["pixel_f1"] for t, r in acc.result(value).items()}
    return row


def analyse(path, sigmas, normalizations, references):
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    for sigma in sigmas:
        for normalize in normalizations:
            for reference in references:
                row = score(data, sigma, normalize, reference)
                mean4 = {k: float(np.mean([v[t] for t in TYPES])) for k, v in row.items()}
                per_type = " ".join(f"{t} {row['aupro'][t]:.3f}" for t in TYPES)
                rules = " ".join(f"{k} {v:.4f}" for k, v in mean4.items() if k != "aupro")
                print(
                    f"{os.path.basename(path)} sigma={sigma:g} normalize={normalize} "
                    f"reference={reference}: mean4 AUPRO {mean4['aupro']:.3f} ({per_type}); "
                    f"mean4 F1: {rules}",
                    flush=True,
                )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("workdir")
    d.add_argument("out")
    d.add_argument("--method", default="msfr")
    a = sub.add_parser("analyse")
    a.add_argument("pickle")
    a.add_argument("--sigmas", default="0,4")
    a.add_argument("--normalize", default="none,median")
    a.add_argument("--reference", default="none,mean,std,meanstd")
    args = ap.parse_args()
    if args.command == "dump":
        dump(args.workdir, args.out, args.method)
    else:
        floats = [float(s) for s in args.sigmas.split(",")]
        analyse(args.pickle, floats, args.normalize.split(","), args.reference.split(","))


if __name__ == "__main__":
    main()
