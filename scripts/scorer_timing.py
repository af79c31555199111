"""Time per image of a trained run's maps: medians taken on the host against on the device.

    python scripts/scorer_timing.py runs/demo32 --images 32

Random images of the run's size are mapped by `inference.Scorer` (the run's score fields,
every local device) as `msfr` (raw MSFR), as msfr_pixel's parts with the per-image medians
taken on the host (`components`, what evaluation and predict use) and on the device (as the
exported artefacts compute them: by selection, and by sorting as before), and as MSFR over its
median (`score.normalize=median`, magnetic tile's config) divided on the host and on the
device (both ways).
Each is called once on half the images (compile) and timed on all of them.
"""

import argparse
import copy
import json
import time

import numpy as np

from cmaae_jax import devices, inference, score_options, scoring
from cmaae_jax import workdir as workdir_lib


def _timed(fn, x) -> tuple[float, float]:
    """(seconds of the first call on half of x, milliseconds per image over all of x)."""
    t0 = time.perf_counter()
    fn(x[: len(x) // 2])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn(x)
    return first, 1000 * (time.perf_counter() - t0) / len(x)


def _divided_on_device(config, variables, components: bool, median: str = "select"):
    """A scorer whose medians are taken on the device (msfr_pixel's parts with `components`,
    else `score.normalize`'s): evaluation's scorer with the device's divided maps swapped in
    (same batching and devices)."""
    scorer = inference.Scorer(config, variables)
    options = dict(score_options.map_options(config.score), components=components, median=median)
    scorer.fn = scoring.make_map_fn(scorer.net, pmapped=scorer.devices > 1, **options)
    if scorer.spread_fn is not None:
        scorer.spread_fn = scoring.make_map_fn(scorer.net, spread=True, **options)
    scorer.median_on_host = False
    return scorer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--cpu-devices", type=int, default=-1, help="as the launchers: -1 auto")
    args = parser.parse_args()
    devices.set_cpu_devices(args.cpu_devices)
    config = workdir_lib.load_config(args.workdir)
    config.score.method = "msfr"
    _, variables = inference.restore_variables(config, args.workdir)
    size = config.data.image_size
    x = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3), np.uint8)
    aligned = copy.deepcopy(config)
    aligned.score.method = score_options.ALIGNED_METHOD
    median = copy.deepcopy(config)
    median.score.normalize = "median"
    timings = {
        "msfr": inference.Scorer(config, variables),
        "parts_host_median": inference.Scorer(aligned, variables, components=True),
        "parts_device_median": _divided_on_device(aligned, variables, components=True),
        "msfr_median_host": inference.Scorer(median, variables),
        "msfr_median_device": _divided_on_device(median, variables, components=False),
        "parts_device_median_sort": _divided_on_device(aligned, variables, True, "sort"),
        "msfr_median_device_sort": _divided_on_device(median, variables, False, "sort"),
    }
    out = {}
    for name, fn in timings.items():
        first, per_image = _timed(fn, x)
        out[name] = {"first_call_s": round(first, 2), "ms_per_image": round(per_image, 1)}
    print(json.dumps({"image_size": size, "images": args.images, **out}, indent=2))


if __name__ == "__main__":
    main()
