"""Speed of the library's training step and MSFR inference, comparable to the PyTorch reference.

    python launch/benchmark.py                       # batch 512, as bench/torch_reference.py
    python launch/benchmark.py --batch 64 --steps 3 --warmup 1 --image-size 256
    python launch/benchmark.py --dtype bfloat16 --json out.json   # mixed precision

What it times is `cmaae_jax/benchmark.py`. On a CPU the step runs on `--cpu-devices` virtual
devices, by default the same number `launch/train.py` uses (`local_device_count` in the
output). Prints one JSON object (also written to `--json`).
"""

import argparse
import dataclasses
import json
import sys

import _common


def parse(argv):
    from cmaae_jax.benchmark import Options

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Options):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            ap.add_argument(flag, action="store_true")
        else:
            ap.add_argument(flag, type=type(field.default), default=field.default)
    ap.add_argument("--cpu-devices", type=int, default=-1, help="0: one device; -1: auto")
    ap.add_argument("--json", default=None, help="also write the JSON object here")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    _common.set_cpu_devices(args.cpu_devices)
    from cmaae_jax import benchmark
    from configs import default

    names = {f.name for f in dataclasses.fields(benchmark.Options)}
    options = benchmark.Options(**{k: v for k, v in vars(args).items() if k in names})
    result = benchmark.run(options, default.get_config())
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
