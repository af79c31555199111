"""Time per image of a trained run's maps: raw MSFR against msfr_pixel's parts two ways.

    python scripts/scorer_timing.py runs/demo32 --images 32

Random images of the run's size are mapped by `inference.Scorer` (the run's score fields,
every local device) as `msfr` (raw MSFR), as msfr_pixel's parts with the per-image medians
taken on the host (`components`, what evaluation and predict use), and with them taken on
the device (`make_map_fn(components=True)` pmapped, as the exported artefacts compute them).
Each is called once on half the images (compile) and timed on all of them.
"""

import argparse
import copy
import json
import time

import numpy as np

from cmaae_jax import devices, inference, scoring
from cmaae_jax import workdir as workdir_lib


def _timed(fn, x) -> tuple[float, float]:
    """(seconds of the first call on half of x, milliseconds per image over all of x)."""
    t0 = time.perf_counter()
    fn(x[: len(x) // 2])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn(x)
    return first, 1000 * (time.perf_counter() - t0) / len(x)


def _device_parts(config, variables):
    """A scorer of msfr_pixel's parts with the medians taken on the device: evaluation's
    scorer with the device's finished parts swapped in (same batching and devices)."""
    scorer = inference.Scorer(config, variables)
    options = dict(scoring.map_options(config.score), components=True)
    scorer.fn = scoring.make_map_fn(scorer.net, pmapped=scorer.devices > 1, **options)
    if scorer.spread_fn is not None:
        scorer.spread_fn = scoring.make_map_fn(scorer.net, spread=True, **options)
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
    aligned.score.method = scoring.ALIGNED_METHOD
    timings = {
        "msfr": inference.Scorer(config, variables),
        "parts_host_median": inference.Scorer(aligned, variables, components=True),
        "parts_device_median": _device_parts(aligned, variables),
    }
    out = {}
    for name, fn in timings.items():
        first, per_image = _timed(fn, x)
        out[name] = {"first_call_s": round(first, 2), "ms_per_image": round(per_image, 1)}
    print(json.dumps({"image_size": size, "images": args.images, **out}, indent=2))


if __name__ == "__main__":
    main()
