"""Time per image of the MSFR map as evaluation runs it, by window stride and calling mode.

    python scripts/map_speed.py --stride 16 [--scales 123] [--side 512] [--repeats 5]
    # another commit's library, side by side: PYTHONPATH=<worktree of it> python scripts/...

Modes: `spread1`, one image a call split over the local devices (what evaluation does on CPU
devices, `inference.Scorer`); `spread4`, four images a call likewise; `pmap`, whole images per
device, two each (accelerators). Two virtual CPU devices unless XLA_FLAGS sets a count.
Untrained weights (the speed does not depend on them). Prints one line per mode, median ms
per image over `--repeats` calls after the first, compiling one (its seconds beside them).
"""

import argparse
import os
import statistics
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    os.environ["XLA_FLAGS"] = flags.strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import cmaae_jax  # noqa: E402
from cmaae_jax import model, scoring, spread  # noqa: E402


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """(median ms of `repeats` calls, ms of the first, compiling one)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first, times = 1000.0 * (time.perf_counter() - t0), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times), first


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--scales", default="123", help="MSFR encoder layers, e.g. 1 or 123")
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default="spread1,spread4,pmap")
    args = ap.parse_args()
    print("library:", os.path.dirname(cmaae_jax.__file__), file=sys.stderr)
    net = model.CMAAE()
    variables = model.init(net, jax.random.key(0))
    scales = tuple(int(c) for c in args.scales)
    rng = np.random.default_rng(1)
    d = jax.local_device_count()
    for mode in args.modes.split(","):
        b = {"spread1": 1, "spread4": 4, "pmap": 2 * d}[mode]
        x = rng.uniform(-1, 1, (b, args.side, args.side, 3)).astype(np.float32)
        if mode == "pmap":
            fn = scoring.make_map_fn(net, "msfr", scales, pmapped=True, stride=args.stride)
            v, x = spread.replicate(variables), x.reshape(d, 2, *x.shape[1:])
        else:
            fn = scoring.make_map_fn(net, "msfr", scales, spread=True, stride=args.stride)
            v = spread.put_variables(variables)
        ms, first = median_ms(lambda fn=fn, v=v, x=x: fn(v, x), args.repeats)
        print(
            f"stride {args.stride} scales {args.scales} {mode}: {ms / b:.1f} ms per image"
            f" (first call, compiling: {first / 1000:.1f} s)"
        )


if __name__ == "__main__":
    main()
