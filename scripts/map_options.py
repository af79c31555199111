"""Post-processing options of trained runs' maps, measured without retraining (RESULTS.md).

    python scripts/map_options.py dump runs/study12/full/seed0 /tmp/maps/full_seed0.pkl
    python scripts/map_options.py analyse /tmp/maps/full_seed0.pkl
    python scripts/map_options.py dump runs/demo /tmp/maps/demo.pkl --stride 16
    python scripts/map_options.py analyse /tmp/maps/demo.pkl --normalize none --reference none \
        --types contamination,cut,hole,scratch,spot --quantiles 0.99,0.995,0.999,0.9995,0.9999
    python scripts/map_options.py dump runs/study12b/seg_blob/seed0 /tmp/maps/seg.pkl \
        --method segment
    python scripts/map_options.py analyse /tmp/maps/seg.pkl --sigmas 0 --normalize none \
        --reference none --fixed 0.6931
    python scripts/map_options.py images /tmp/maps/full_seed0.pkl
    python scripts/map_options.py dump runs/study512b/varied/seed4 /tmp/maps/s4_at256.pkl \
        --image-size 256
    python scripts/map_options.py fuse /tmp/maps/s4_pyr.pkl /tmp/maps/s4.pkl \
        /tmp/maps/s4_at256.pkl --scale median --combine geo

`dump` scores the run's held-out normal images (val) and test images with its own config but
`score.normalize=none`, `score.scales=(1,)` (and `--method`), and pickles the maps cropped to
each image's valid region. `analyse` then compares, per defect type (its images plus every
normal test image): Gaussian smoothing of the map (sigma in pixels), per-image median
normalisation over the valid region, a per-position reference of the normal val maps (mean
subtracted, divided by the std, or both; `meanvar` divides by sqrt(var + median var); resampled
to each image's size) or the map's own neighbourhood (`local`, `local_mean` (=
`local_ratio`), `local_median`), and label-free threshold rules (quantiles of the val pixels,
the largest val pixel, the median of the val images' maxima). `images` compares image scores
(the map's maximum, the maximum after Gaussian smoothing, the mean of the top share of pixels)
by image AUROC per type. Nothing here looks at test masks to choose anything: every option is
scored.
"""

import argparse
import os
import pickle

import numpy as np

TYPES = ("blowhole", "break", "crack", "fray")


def _padded(image_hxwx3, margin):
    """`image` reflect-padded by `margin` on every side, then as the library pads splits."""
    from cmaae_jax import images

    framed = np.pad(image_hxwx3, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    return images.pad_to(framed, images.padded_size(framed.shape[:2]))


def dump_fields(split) -> dict:
    """What a dump keeps of a split besides its maps: grey images (float16), masks (both
    cropped to each image's valid region), labels and defect types."""
    crops = [split.valid_map(i, split.images[i]) for i in range(split.num_images)]
    return dict(
        images=[c.astype(np.float32).mean(-1).astype(np.float16) for c in crops],
        masks=[split.valid_map(i, split.masks[i]) for i in range(split.num_images)],
        labels=np.asarray(split.labels),
        types=split.defect_types,
    )


def dump(workdir, out, method, stride=None, margin=0, image_size=None):
    """Pickles each val/test image's map, mask, grey image (float16), label and type. With
    `image_size` the images are loaded at that size (the model stays the run's)."""
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    from cmaae_jax import datasets, inference
    from cmaae_jax import workdir as workdir_lib

    config = workdir_lib.load_config(workdir)
    with config.unlocked():
        config.score.normalize, config.score.scales, config.score.method = "none", (1,), method
        if stride:
            config.score.stride = stride
    _, variables = inference.restore_variables(config, workdir)
    if image_size:
        with config.unlocked():
            config.data.image_size = image_size
    splits = datasets.load_splits(config)
    scorer = inference.Scorer(config, variables)
    result = {}
    for name in ("val", "test"):
        split = splits[name]
        crops = [split.valid_map(i, split.images[i]) for i in range(split.num_images)]
        maps = [None] * split.num_images
        for idx, batch in scorer.batches([_padded(c, margin) for c in crops]):
            for j, i in enumerate(idx):
                h, w = crops[i].shape[:2]
                maps[i] = np.asarray(batch[j][margin : margin + h, margin : margin + w], np.float32)
        result[name] = dict(maps=maps, **dump_fields(split))
    with open(out, "wb") as fh:
        pickle.dump(result, fh)


def border(path, widths=(2, 4, 8, 16), quantile=0.999):
    """Share of the normal pixels above the `quantile` of their own set (val, normal test;
    median-normalised maps) lying within each width of the image border, against the share
    of the area there."""
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    test = data["test"]
    normal_test = [m for m, label in zip(test["maps"], test["labels"], strict=True) if label == 0]
    for name, maps in (("val", data["val"]["maps"]), ("normal test", normal_test)):
        maps = [_prepare(m, 0, "median") for m in maps]
        q = np.quantile(np.concatenate([m.ravel() for m in maps]), quantile)
        high = sum(int((m >= q).sum()) for m in maps)
        total = sum(m.size for m in maps)
        for w in widths:
            rim = [_rim(m.shape, w) for m in maps]
            top = sum(int((m[r] >= q).sum()) for m, r in zip(maps, rim, strict=True))
            area = sum(int(r.sum()) for r in rim)
            print(f"{name}: {top / high:.2f} of pixels >= q within {w} px ({area / total:.2f})")
        sides = sum(int((m[:, :8] >= q).sum() + (m[:, -8:] >= q).sum()) for m in maps)
        print(f"{name}: {sides / high:.2f} of pixels >= q in the 8 left and right columns")


def _rim(shape, width):
    rim = np.zeros(shape, bool)
    rim[:width], rim[-width:], rim[:, :width], rim[:, -width:] = True, True, True, True
    return rim


def gradient(path, sigma, types=TYPES, bins=32):
    """Mean4 AUPRO and F1 max with each median-normalised map divided by, or minus, the mean
    val residual at the pixel's image-gradient magnitude (Gaussian, `sigma`; quantile bins)."""
    from scipy import ndimage

    with open(path, "rb") as fh:
        data = pickle.load(fh)
    grads = {
        k: [ndimage.gaussian_gradient_magnitude(im.astype(np.float32), sigma) for im in d["images"]]
        for k, d in data.items()
    }
    maps = {k: [_prepare(m, 0, "median") for m in d["maps"]] for k, d in data.items()}
    g = np.concatenate([x.ravel() for x in grads["val"]])
    r = np.concatenate([m.ravel() for m in maps["val"]])
    edges = np.quantile(g, np.linspace(0, 1, bins + 1)[1:-1])
    expected = np.array([r[np.digitize(g, edges) == b].mean() for b in range(bins)])
    for mode in ("divide", "subtract"):
        post = {}
        for k, d in data.items():
            e = [expected[np.digitize(x, edges)] for x in grads[k]]
            new = [m / v if mode == "divide" else m - v for m, v in zip(maps[k], e, strict=True)]
            post[k] = dict(d, maps=new)
        row = score(post, 0, "none", "none")
        mean = {k: float(np.mean([row[k][t] for t in types])) for k in ("aupro", "f1max")}
        print(
            f"gradient sigma {sigma:g} {mode}: mean AUPRO {mean['aupro']:.3f}, F1 max "
            f"{mean['f1max']:.4f}",
            flush=True,
        )


def _resize(map_hxw, shape):
    from PIL import Image

    image = Image.fromarray(np.asarray(map_hxw, np.float32))
    return np.asarray(image.resize((shape[1], shape[0]), Image.BILINEAR))


BORDER_PX = 32  # border profiles: distances 0..31 px from a side, 32 = the interior


def _side_distance(n, cap=BORDER_PX):
    i = np.arange(n)
    return np.minimum(np.minimum(i, n - 1 - i), cap)


def _border_profile(val_maps, mode):
    """A function map -> map dividing each pixel by the normal maps' ratio at its distance
    from the image's sides (val pixels at that distance against the interior's): `border`
    by the nearest side (means), `border_q` likewise with 0.99-quantiles, `border_axes` by
    a column factor times a row factor (means). Sizes may differ; no defect label is read."""
    stat = (lambda v: np.quantile(v, 0.99)) if mode == "border_q" else np.mean

    def profile(dist_of):
        dists = [dist_of(v.shape) for v in val_maps]
        pooled = np.concatenate([v.ravel() for v in val_maps])
        d_all = np.concatenate([d.ravel() for d in dists])
        ratio = np.array([stat(pooled[d_all == d]) for d in range(BORDER_PX + 1)])
        return ratio / ratio[-1]

    if mode == "border_axes":
        fy = profile(lambda s: np.broadcast_to(_side_distance(s[0])[:, None], s))
        fx = profile(lambda s: np.broadcast_to(_side_distance(s[1])[None, :], s))
        factor = lambda s: np.outer(fy[_side_distance(s[0])], fx[_side_distance(s[1])])
    else:
        f = profile(lambda s: np.minimum.outer(_side_distance(s[0]), _side_distance(s[1])))
        factor = lambda s: f[np.minimum.outer(_side_distance(s[0]), _side_distance(s[1]))]
    print(f"{mode} profile ready", flush=True)
    return lambda m: m / factor(m.shape)


LOCAL_PX = 65  # side of the box of `local` and `local_mean` (one window, PATCH + 1)
MEDIAN_CELLS, MEDIAN_CELL = 17, 8  # `local_median`: box side in cells (136 px), cell side


def _cell_median(m, cells=MEDIAN_CELLS, cell=MEDIAN_CELL):
    """Median of `m` over a box of `cells` x `cells` cells around each pixel, taken on the map
    mean-pooled in `cell` x `cell` cells (sides reflect-padded to whole cells) and resized back
    bilinearly (scipy and PIL: an implementation apart from cmaae_jax.map_levels')."""
    from scipy import ndimage

    h, w = m.shape
    padded = np.pad(m, ((0, -h % cell), (0, -w % cell)), mode="symmetric")
    hc, wc = padded.shape[0] // cell, padded.shape[1] // cell
    pooled = padded.reshape(hc, cell, wc, cell).mean((1, 3))
    around = ndimage.median_filter(pooled, size=cells, mode="reflect")
    return _resize(around, padded.shape)[:h, :w]


def _local_reference(mode):
    """A function map -> map against its own neighbourhood (no other map is read): `local`
    subtracts the mean over a LOCAL_PX box; `local_mean` (the sixteenth session's
    `local_ratio`) divides by it plus the map's median; `local_median` divides by the box
    median (`_cell_median`) plus the map's median."""
    from scipy import ndimage

    def apply(m):
        if mode == "local_median":
            return m / (_cell_median(m) + np.median(m) + 1e-12)
        around = ndimage.uniform_filter(m, LOCAL_PX, mode="reflect")
        return m - around if mode == "local" else m / (around + np.median(m) + 1e-12)

    return apply


def _reference(val_maps, mode, side=256):
    """A function map -> map applying the per-position reference `mode` of `val_maps`."""
    if mode == "none":
        return lambda m: m
    if mode.startswith("border"):
        return _border_profile(val_maps, mode)
    if mode in ("local", "local_ratio", "local_mean", "local_median"):
        return _local_reference(mode)
    canvas = np.stack([_resize(v, (side, side)) for v in val_maps])
    mu, var = canvas.mean(0), canvas.var(0)
    if mode == "meanvar":  # regularised: sqrt(var + median var), no position amplified > ~1.4x
        sd = np.sqrt(var + np.median(var))
    else:
        sd = np.maximum(np.sqrt(var), 0.1 * np.median(np.sqrt(var)))

    def apply(m):
        mu_i, sd_i = _resize(mu, m.shape), _resize(sd, m.shape)
        centred = m - mu_i if mode in ("mean", "meanstd", "meanvar") else m
        return centred / sd_i if mode in ("std", "meanstd", "meanvar") else centred

    return apply


def _prepare(m, sigma, normalize):
    from scipy import ndimage

    m = ndimage.gaussian_filter(m, sigma, mode="reflect") if sigma > 0 else m
    return m / (np.median(m) + 1e-12) if normalize == "median" else m


QUANTILES = (0.999, 0.9999)
FIXED = ()  # fixed thresholds (e.g. log 2: the segment head's p = 0.5)


def _thresholds(val_maps):
    from cmaae_jax import calibration

    pooled = np.concatenate([v.ravel() for v in val_maps])
    return {
        **{f"q{q}": calibration.threshold_from_normal(pooled, q) for q in QUANTILES},
        "val max": float(pooled.max()),
        "median of val maxima": float(np.median([v.max() for v in val_maps])),
        **{f"fixed {t:g}": t for t in FIXED},
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
        "image_auroc": {t: r["image_auroc"] for t, r in unthresholded.items()},
    }
    for name, value in rules.items():
        row[name] = {t: r["pixel_f1"] for t, r in acc.result(value).items()}
    return row


BAND_SIGMA_PX = 4.0  # `band`: the Gaussian that splits the first map's log into level and detail


def _combine(maps, combine):
    """mean | geo (geometric mean) | max_geo (the first map where it is higher, else geo) |
    band (the geometric mean of the maps' levels, the first map's own detail: log m =
    log m1 + mean_k(G log m_k - G log m1), G a Gaussian of BAND_SIGMA_PX)."""
    if combine == "mean":
        return np.mean(maps, axis=0)
    logs = np.log(np.maximum(maps, 1e-12))
    if combine == "band":
        from scipy import ndimage

        levels = [ndimage.gaussian_filter(lg, BAND_SIGMA_PX, mode="reflect") for lg in logs]
        return np.exp(logs[0] + np.mean(levels, axis=0) - levels[0])
    geo = np.exp(np.mean(logs, axis=0))
    return np.maximum(maps[0], geo) if combine == "max_geo" else geo


def fuse(paths, out, quantile=0.999, scale="quantile", combine="mean"):
    """Pickles the fusion of dumps of the same images (e.g. a run's MSFR and segment maps, or
    one run's maps at two image sizes): each map resized to the first dump's size, divided by
    the `quantile` of its own dump's pooled val pixels (label-free; with `scale="median"` by
    its own median instead), then combined over the dumps (`_combine`: mean, geometric mean,
    or the first map where it exceeds the geometric mean). Masks, images and labels are the
    first dump's."""
    from cmaae_jax import calibration

    dumps = []
    for path in paths:
        with open(path, "rb") as fh:
            dumps.append(pickle.load(fh))
    scales = [  # median: each map's own, computed below
        None
        if scale == "median"
        else calibration.threshold_from_normal(
            np.concatenate([m.ravel() for m in d["val"]["maps"]]), quantile
        )
        for d in dumps
    ]
    fused = {name: dict(dumps[0][name]) for name in ("val", "test")}
    for name in fused:
        shapes = [m.shape for m in dumps[0][name]["maps"]]

        def scaled(maps, s, shapes=shapes):
            sized = [
                m if m.shape == hw else _resize(m, hw) for m, hw in zip(maps, shapes, strict=True)
            ]
            return [m / (np.median(m) + 1e-12 if scale == "median" else s) for m in sized]

        per_dump = [scaled(d[name]["maps"], s) for d, s in zip(dumps, scales, strict=True)]
        fused[name]["maps"] = [_combine(ms, combine) for ms in zip(*per_dump, strict=True)]
    with open(out, "wb") as fh:
        pickle.dump(fused, fh)
    over = "own medians" if scale == "median" else f"val q{quantile} ({scales})"
    print(f"{out}: {combine} of {len(paths)} maps over their {over}")


def analyse(path, sigmas, normalizations, references, types=TYPES):
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    for sigma in sigmas:
        for normalize in normalizations:
            for reference in references:
                row = score(data, sigma, normalize, reference)
                mean4 = {k: float(np.mean([v[t] for t in types])) for k, v in row.items()}
                per_type = " ".join(f"{t} {row['aupro'][t]:.3f}" for t in types)
                rules = " ".join(
                    f"{k} {v:.4f}" for k, v in mean4.items() if k not in ("aupro", "image_auroc")
                )
                f1 = " ".join(f"{t} {row['f1max'][t]:.3f}" for t in types)
                q = f"q{QUANTILES[0]}"
                free = " ".join(f"{t} {row[q][t]:.3f}" for t in types)
                print(
                    f"{os.path.basename(path)} sigma={sigma:g} normalize={normalize} "
                    f"reference={reference}: mean4 AUPRO {mean4['aupro']:.3f} ({per_type}); "
                    f"mean4 F1: {rules}; F1 max ({f1}); F1 {q} ({free}); image AUROC "
                    f"{mean4['image_auroc']:.3f}",
                    flush=True,
                )


def _top_mean(m, share):
    """Mean of the `share` highest pixels of a map (one at least)."""
    return float(np.sort(m.ravel())[-max(1, int(m.size * share)) :].mean())


def _image_top(m, rim):
    """`image_score.image_scores`' `top` of the map with `rim` px left out on every side."""
    from cmaae_jax import image_score

    return float(image_score.image_scores(m, "top_inner", rim)[0])


IMAGE_SCORES = {
    "max": lambda m: float(m.max()),
    "max, sigma 4": lambda m: float(_prepare(m, 4, "none").max()),
    "max, sigma 8": lambda m: float(_prepare(m, 8, "none").max()),
    "top 1% mean": lambda m: _top_mean(m, 0.01),
    "top 0.1% mean": lambda m: _top_mean(m, 0.001),
    "max, 8 px rim left out": lambda m: float(m[8:-8, 8:-8].max()),
    "max, 16 px rim left out": lambda m: float(m[16:-16, 16:-16].max()),
    "top (eval.image_score's default)": lambda m: _image_top(m, 0),
    "top, 8 px rim left out": lambda m: _image_top(m, 8),
    "top, 16 px rim left out": lambda m: _image_top(m, 16),
}


def image_scores(path, normalize="median", types=TYPES + ("uneven",)):
    """Image AUROC per type (its images against every normal test image) of each image score
    in `IMAGE_SCORES`, on maps normalised as the run scores them."""
    from cmaae_jax import metrics

    with open(path, "rb") as fh:
        test = pickle.load(fh)["test"]
    maps = [_prepare(m, 0, normalize) for m in test["maps"]]
    labels, kinds = np.asarray(test["labels"]), np.asarray(test["types"])
    for name, fn in IMAGE_SCORES.items():
        scores = np.asarray([fn(m) for m in maps])
        row = {}
        for t in types:
            keep = (labels == 0) | (kinds == t)
            row[t] = metrics.binary_auroc(scores[keep], labels[keep])
        mean4 = np.mean([row[t] for t in TYPES])
        cells = " ".join(f"{t} {v:.3f}" for t, v in row.items())
        print(f"{os.path.basename(path)} {name}: mean4 {mean4:.3f} ({cells})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("workdir")
    d.add_argument("out")
    d.add_argument("--method", default="msfr")
    d.add_argument("--stride", type=int, default=None, help="score.stride (default: the run's)")
    d.add_argument("--margin", type=int, default=0, help="reflect-pad every side by this")
    d.add_argument("--image-size", type=int, default=None, help="load the images at this size")
    f = sub.add_parser("fuse")
    f.add_argument("out")
    f.add_argument("pickles", nargs="+")
    f.add_argument("--scale", default="quantile", help="quantile (val q0.999) | median (own)")
    f.add_argument("--combine", default="mean", help="mean | geo | max_geo | band")
    b = sub.add_parser("border")
    b.add_argument("pickle")
    g = sub.add_parser("gradient")
    g.add_argument("pickle")
    g.add_argument("--sigmas", default="1,2,4")
    i = sub.add_parser("images")
    i.add_argument("pickle")
    i.add_argument("--normalize", default="median")
    a = sub.add_parser("analyse")
    a.add_argument("pickle")
    a.add_argument("--sigmas", default="0,4")
    a.add_argument("--normalize", default="none,median")
    a.add_argument("--reference", default="none,mean,std,meanstd,meanvar")
    a.add_argument("--types", default=",".join(TYPES), help="defect types averaged")
    a.add_argument("--quantiles", default="0.999,0.9999", help="quantile threshold rules")
    a.add_argument("--fixed", default="", help="fixed thresholds, e.g. 0.6931 (head p = 0.5)")
    args = ap.parse_args()
    if args.command == "dump":
        dump(args.workdir, args.out, args.method, args.stride, args.margin, args.image_size)
    elif args.command == "fuse":
        fuse(args.pickles, args.out, scale=args.scale, combine=args.combine)
    elif args.command == "border":
        border(args.pickle)
    elif args.command == "images":
        image_scores(args.pickle, args.normalize)
    elif args.command == "gradient":
        for sigma in args.sigmas.split(","):
            gradient(args.pickle, float(sigma))
    else:
        global QUANTILES, FIXED
        QUANTILES = tuple(float(q) for q in args.quantiles.split(","))
        FIXED = tuple(float(t) for t in args.fixed.split(",") if t)
        floats = [float(s) for s in args.sigmas.split(",")]
        analyse(
            args.pickle,
            floats,
            args.normalize.split(","),
            args.reference.split(","),
            tuple(args.types.split(",")),
        )


if __name__ == "__main__":
    main()
