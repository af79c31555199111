"""MSFR and the pixel residual z-scored apart, then fused, on aligned runs (RESULTS.md,
thirtieth session). No retraining; no test mask chooses anything.

    python scripts/aligned_fusions.py dump runs/aligned26/cast_crack_s2 /tmp/maps/cc_s2.pkl
    python scripts/aligned_fusions.py analyse /tmp/maps/cc_s2.pkl [...] --json rows.json
    python scripts/aligned_fusions.py images /tmp/maps/cc_s2.pkl [...] --json rows.json

`dump` scores a run's first `score.reference_images` training images, its held-out normal
(val) and its test images twice, by MSFR and by the pixel residual (the run's other score
fields, `score.normalize=none`), and pickles the valid maps with the test masks, labels and
types. `analyse` z-scores each map by a per-position reference of its own method's training
maps (`reference.build`, as `score.reference=zscore` builds it) and compares, per run:
MPZ (`msfr_pixel` z-scored, what `score.method=auto` gives aligned images), PZ (the pixel
residual z-scored), MZ (MSFR z-scored) and fusions of MZ and PZ: `max`, `mean`, `zmix`
((MZ + 2 PZ) / 3) and `l2` (the length of their positive parts); plan 2's, of each map over
its image's median, z-scored apart: `PZ_med`, `zmean_med` (their mean, plan 2's candidate)
and `zmix_med` ((MZ' + 2 PZ') / 3, built); plan 5's `zmix3_med` and `zmix4_med` (weights
1 : 3 and 1 : 4); the thirty-second session's `zmix4_med_s1` and `zmix4_med_s2`: zmix4_med of
parts smoothed by a Gaussian of sigma 1 or 2 px (training maps too) before they are
z-scored; `zmix6_med` and `zmix8_med` (weights 1 : 6 and 1 : 8); the thirty-third session's
`SPREADS` (named in `--only` only). `--only zmix_med,zmix4_med`
measures those maps alone. Metrics: AUPRO, F1 max and the F1 at the quantile 0.999 of the
held-out maps, of the `crack` type for runs whose folder name holds "crack", else pooled
over the test set. `images` (plan 8): the built map's image AUROC with each image scored by
its maximum or by the mean of its highest pixels.
"""

import argparse
import json
import os
import pickle

import numpy as np

METHODS = ("msfr", "pixel")


def dump(workdir: str, out: str) -> None:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    from cmaae_jax import datasets, inference
    from cmaae_jax import workdir as workdir_lib

    result = {}
    for method in METHODS:
        config = workdir_lib.load_config(workdir)
        with config.unlocked():
            config.score.normalize, config.score.method = "none", method
        _, variables = inference.restore_variables(config, workdir)
        splits = datasets.load_splits(config)
        scorer = inference.Scorer(config, variables)
        for name in ("train", "val", "test"):
            split = splits[name]
            n = split.num_images
            if name == "train":
                n = min(n, config.score.get("reference_images", 64))
            maps = inference.valid_maps(scorer, split, np.arange(n))
            part = result.setdefault(name, {})
            part[method] = [np.asarray(m, np.float32) for m in maps]
            if name == "test":
                part["masks"] = [split.valid_map(i, split.masks[i]) for i in range(n)]
                part["labels"] = np.asarray(split.labels)
                part["types"] = split.defect_types
    with open(out, "wb") as fh:
        pickle.dump(result, fh)


def _over_median(m):
    return m / (np.median(m) + 1e-12)


def _smoothed_zmix4(data: dict, sigma: float) -> dict:
    """{split: maps} of zmix4_med with each part over its median smoothed by a Gaussian of
    `sigma` px (scipy.ndimage, reflected edges) before its reference is built and applied."""
    from scipy import ndimage

    from cmaae_jax import reference

    def parts(split):
        return {
            m: [ndimage.gaussian_filter(_over_median(x), sigma) for x in data[split][m]]
            for m in METHODS
        }

    refs = {m: reference.build(maps) for m, maps in parts("train").items()}
    out = {}
    for split in ("val", "test"):
        mz, pz = (reference.apply(refs[m], maps) for m, maps in parts(split).items())
        out[split] = [(a + 4 * b) / 5 for a, b in zip(mz, pz, strict=True)]
    return out


# The thirty-third session's exploration of the spread (each z-scored part's denominator):
# sqrt(var + floor) with the floor the mean or a quartile of the per-position variances
# instead of their median, or a robust reference (per-position median, 1.4826 x MAD).
SPREADS = {
    "zmix4_floor_mean": lambda var: var.mean(),
    "zmix4_floor_q25": lambda var: np.quantile(var, 0.25),
    "zmix4_floor_q75": lambda var: np.quantile(var, 0.75),
    "zmix4_robust": None,
}


def _spread_zmix4(data: dict, name: str) -> dict:
    """{split: maps} of zmix4_med with the spread of `SPREADS[name]` (module docstring)."""

    def stats(maps):
        x = np.stack(maps).astype(np.float64)
        if SPREADS[name] is None:
            centre = np.median(x, 0)
            var = (1.4826 * np.median(np.abs(x - centre), 0)) ** 2
            return centre, np.sqrt(var + np.median(var))
        return x.mean(0), np.sqrt(x.var(0) + SPREADS[name](x.var(0)))

    refs = {m: stats([_over_median(x) for x in data["train"][m]]) for m in METHODS}
    out = {}
    for split in ("val", "test"):
        z = {
            m: [(_over_median(x) - refs[m][0]) / refs[m][1] for x in data[split][m]]
            for m in METHODS
        }
        out[split] = [(a + 4 * b) / 5 for a, b in zip(z["msfr"], z["pixel"], strict=True)]
    return out


def fused_maps(data: dict, only=None) -> dict:
    """{map name: {"val": maps, "test": maps}} of one dump."""
    from cmaae_jax import reference

    train = data["train"]
    mixed_train = [
        _over_median(a) + _over_median(b) for a, b in zip(*(train[m] for m in METHODS), strict=True)
    ]
    refs = {m: reference.build(train[m]) for m in METHODS}
    refs_med = {m: reference.build([_over_median(x) for x in train[m]]) for m in METHODS}
    ref_mixed = reference.build([0.5 * m for m in mixed_train])
    out = {}
    for split in ("val", "test"):
        s = data[split]
        mz, pz = (reference.apply(refs[m], s[m]) for m in METHODS)
        mixed = [
            0.5 * (_over_median(a) + _over_median(b))
            for a, b in zip(s["msfr"], s["pixel"], strict=True)
        ]
        maps = {
            "MPZ": reference.apply(ref_mixed, mixed),
            "PZ": pz,
            "MZ": mz,
            "max": [np.maximum(a, b) for a, b in zip(mz, pz, strict=True)],
            "mean": [0.5 * (a + b) for a, b in zip(mz, pz, strict=True)],
            "zmix": [(a + 2 * b) / 3 for a, b in zip(mz, pz, strict=True)],
            "l2": [
                np.hypot(np.maximum(a, 0), np.maximum(b, 0)) for a, b in zip(mz, pz, strict=True)
            ],
        }
        # plan 2: each map over its image's median first (as msfr_pixel's parts), then z-scored
        mzm, pzm = (reference.apply(refs_med[m], [_over_median(x) for x in s[m]]) for m in METHODS)
        maps["PZ_med"] = pzm
        maps["zmean_med"] = [(a + b) / 2 for a, b in zip(mzm, pzm, strict=True)]
        maps["zmix_med"] = [(a + 2 * b) / 3 for a, b in zip(mzm, pzm, strict=True)]
        # thirty-first session's plan 5: three and four times the weight on the pixel part
        maps["zmix3_med"] = [(a + 3 * b) / 4 for a, b in zip(mzm, pzm, strict=True)]
        maps["zmix4_med"] = [(a + 4 * b) / 5 for a, b in zip(mzm, pzm, strict=True)]
        # thirty-second session's exploration: six and eight times
        maps["zmix6_med"] = [(a + 6 * b) / 7 for a, b in zip(mzm, pzm, strict=True)]
        maps["zmix8_med"] = [(a + 8 * b) / 9 for a, b in zip(mzm, pzm, strict=True)]
        for name, value in maps.items():
            out.setdefault(name, {})[split] = value
    for sigma in (1, 2):
        if not only or f"zmix4_med_s{sigma}" in only:
            out[f"zmix4_med_s{sigma}"] = _smoothed_zmix4(data, sigma)
    for name in SPREADS:
        if name in (only or ()):  # on request only
            out[name] = _spread_zmix4(data, name)
    return out


def measure(val_maps, test_maps, test: dict, crack: bool) -> dict:
    """AUPRO, F1 max and the F1 at the held-out maps' quantile 0.999 (`crack`: of that type)."""
    from cmaae_jax import calibration, metrics

    q = calibration.threshold_from_normal(np.concatenate([m.ravel() for m in val_maps]), 0.999)
    if crack:
        acc = metrics.PerTypeAccumulator(test["types"], test["labels"], (q,))
    else:
        acc = metrics.PixelAccumulator(thresholds=(q,))
    for i, m in enumerate(test_maps):
        if crack:
            acc.update(
                m[None], test["masks"][i][None], [test["types"][i]], test["labels"][i : i + 1]
            )
        else:
            acc.update(m[None], test["masks"][i][None], test["labels"][i : i + 1])
    r = acc.result(q)["crack"] if crack else acc.result(q)
    return {"aupro": r["pixel_aupro"], "f1_max": r["pixel_f1_max"], "f1_q999": r["pixel_f1"]}


def images(paths, out_json=None, ks=(5, 10, 20, 40)) -> None:
    """Image AUROC of the built map (zmix4_med) with each image scored by its maximum, by the
    mean of its `ks` highest pixels and by `image_score.image_scores`' `top` (plan 8's):
    the crack type's images against every normal test image on runs whose name holds
    "crack", every test image otherwise."""
    from cmaae_jax import image_score, metrics

    rows = {}
    for path in paths:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
        name = os.path.basename(path)
        test = data["test"]
        maps = fused_maps(data, ["zmix4_med"])["zmix4_med"]["test"]
        labels = np.asarray(test["labels"])
        keep = [
            "crack" not in name or lab == 0 or kind == "crack"
            for lab, kind in zip(labels, test["types"], strict=True)
        ]
        kept = [m for m, k in zip(maps, keep, strict=True) if k]
        truth = labels[np.asarray(keep)].tolist()
        scores = {"max": [float(m.max()) for m in kept]}
        scores.update(
            {f"top{k}": [float(np.sort(m.ravel())[-k:].mean()) for m in kept] for k in ks}
        )
        scores["top"] = [float(image_score.image_scores(m, "top")[0]) for m in kept]
        rows[name] = {how: metrics.binary_auroc(v, truth) for how, v in scores.items()}
        print(name, " ".join(f"{h} {v:.4f}" for h, v in rows[name].items()), flush=True)
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(rows, fh, indent=1, sort_keys=True)


def analyse(paths, out_json=None, only=None) -> None:
    """Measures each dump's maps (`only`: those names) and prints a line per map."""
    rows = {}
    for path in paths:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
        name = os.path.basename(path)
        crack = "crack" in name
        rows[name] = {"crack": crack}
        for method, maps in fused_maps(data, only).items():
            if only and method not in only:
                continue
            r = measure(maps["val"], maps["test"], data["test"], crack)
            rows[name][method] = r
            print(
                f"{name:36s} {method:5s} AUPRO {r['aupro']:.3f} F1 max {r['f1_max']:.3f} "
                f"F1 (q0.999) {r['f1_q999']:.3f}",
                flush=True,
            )
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(rows, fh, indent=1, sort_keys=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("workdir")
    d.add_argument("out")
    a = sub.add_parser("analyse")
    a.add_argument("pickles", nargs="+")
    a.add_argument("--json", default=None)
    a.add_argument("--only", default="", help="comma-separated map names (default: all)")
    i = sub.add_parser("images")
    i.add_argument("pickles", nargs="+")
    i.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.workdir, args.out)
    elif args.command == "images":
        images(args.pickles, args.json)
    else:
        analyse(args.pickles, args.json, [m for m in args.only.split(",") if m])


if __name__ == "__main__":
    main()
