"""Where the training step's (or the MSFR map's) time goes, per XLA op, summed over the device
threads.

    python scripts/profile_step.py --batch 512 [--steps-per-call 4] [--trace-dir DIR] [--top 70]
    python scripts/profile_step.py --map [--trace-dir DIR]     # the MSFR map of one 512x512 image
    python scripts/profile_step.py --map --stride 16 --scales 1   # the map evaluation runs

Builds the benchmark's stage-1 step (`benchmark.stage1_step`: 64x64 images, one crop each,
the default config and the benchmark's options, 2 virtual CPU devices), compiles it as
`train.train` does, runs 3 calls (of `--steps-per-call` steps each), traces 2 with
`jax.profiler` (XLA:CPU's per-op trace events switched on) and prints the time per step of
each op (both device threads summed), with its output shape and the JAX source op it came
from (the compiled step's HLO metadata), then the sums by op kind. Run it on quiet cores.
"""

import argparse
import collections
import glob
import os
import re
import sys

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=2 --xla_cpu_enable_xprof_traceme=true",
)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


TRACED_STEPS = 2


def traced_step(batch: int, trace_dir: str, steps_per_call: int) -> str:
    """Traces TRACED_STEPS calls of the benchmark's step (of `steps_per_call` steps each);
    returns the compiled step's HLO."""
    import jax

    from cmaae_jax import benchmark
    from configs import default

    options = benchmark.Options(batch=batch, steps_per_call=steps_per_call)
    _, compiled, _, state, args = benchmark.stage1_step(options, default.get_config())
    for _ in range(3):  # warm-up
        state, metrics = compiled(state, *args)
        jax.block_until_ready(metrics)
    jax.profiler.start_trace(trace_dir)
    for _ in range(TRACED_STEPS):
        state, metrics = compiled(state, *args)
        jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    return compiled.as_text()


def traced_map(trace_dir: str, stride: int = 64, scales=(1, 2, 3)) -> str:
    """Traces TRACED_STEPS calls of the MSFR map of one 512x512 image (the benchmark's: the
    grid, scales 1-3; evaluation's: `--stride 16 --scales 1`); returns the compiled function's
    HLO."""
    import jax
    import numpy as np

    from cmaae_jax import model, scoring, spread
    from configs import default

    config = default.get_config()
    net = model.from_config(config)
    variables = spread.put_variables(model.init(net, jax.random.key(0)))
    map_fn = scoring.make_map_fn(net, "msfr", scales, spread=True, stride=stride)
    rng = np.random.default_rng(1)
    image = jax.numpy.asarray(rng.uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32))
    for _ in range(3):  # warm-up
        jax.block_until_ready(map_fn(variables, image))
    jax.profiler.start_trace(trace_dir)
    for _ in range(TRACED_STEPS):
        jax.block_until_ready(map_fn(variables, image))
    jax.profiler.stop_trace()
    return map_fn.lower(variables, image).compile().as_text()


def op_times(trace_dir: str) -> collections.Counter:
    """Each op's exclusive time per step (ms): a loop's events nest its body's ops, so
    each event's duration less that of the events inside it on the same thread."""
    import jax

    path = glob.glob(trace_dir + "/**/*.xplane.pb", recursive=True)[0]
    times = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" in line.name or "PjRtCpuClient" in line.name:
                events = sorted(
                    (e.start_ns, e.start_ns + e.duration_ns, e.name)
                    for e in line.events
                    if not e.name.startswith("ThunkExecutor")
                )
                add_exclusive_times(events, times)
    return times


def add_exclusive_times(events, times: collections.Counter) -> None:
    """Adds each (start, end, name) event's exclusive duration (ms per traced step)."""
    open_events = []  # [end, name] of the events that enclose the current one
    for start, end, name in sorted(events, key=lambda e: (e[0], -e[1])):
        while open_events and open_events[-1][0] <= start:
            open_events.pop()
        ms = (end - start) / 1e6 / TRACED_STEPS
        times[name] += ms
        if open_events:
            times[open_events[-1][1]] -= ms
        open_events.append([end, name])


def hlo_info(hlo_text: str) -> dict:
    info = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if m:
            source = re.search(r'op_name="([^"]*)"', line)
            info[m.group(1)] = (m.group(2)[:40], source.group(1)[-100:] if source else "")
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--trace-dir", default="/tmp/step_trace")
    ap.add_argument("--top", type=int, default=70)
    ap.add_argument("--steps-per-call", type=int, default=4, help="train.steps_per_call")
    ap.add_argument("--map", action="store_true", help="the MSFR map instead of the step")
    ap.add_argument("--stride", type=int, default=64, help="--map: score.stride")
    ap.add_argument("--scales", default="123", help="--map: MSFR encoder layers, e.g. 1")
    args = ap.parse_args()
    if glob.glob(args.trace_dir + "/**/*.xplane.pb", recursive=True):
        sys.exit(f"{args.trace_dir} already holds a trace: give an empty --trace-dir")
    if args.map:
        scales = tuple(int(c) for c in args.scales)
        info, per = hlo_info(traced_map(args.trace_dir, args.stride, scales)), 1
    else:
        info = hlo_info(traced_step(args.batch, args.trace_dir, args.steps_per_call))
        per = args.steps_per_call
    times = op_times(args.trace_dir)
    for name in times:  # per step (per call of the map)
        times[name] /= per
    unit = "call" if args.map else "step"
    print(f"all ops: {sum(times.values()):.1f} ms per {unit} (device threads summed)")
    for name, ms in times.most_common(args.top):
        shape, source = info.get(name, ("", ""))
        print(f"{ms:8.1f} ms  {name[:32]:32s} {shape:40s} {source}")
    kinds = collections.Counter()
    for name, ms in times.items():
        kinds[name.split(".")[0]] += ms
    print("\nby kind:")
    for kind, ms in kinds.most_common(25):
        print(f"{ms:8.1f} ms  {kind}")
    print("\nby layer and pass (the ops' JAX source; '?': no source recorded):")
    for layer, (ms, top) in by_layer(times, info)[:30]:
        print(f"{ms:8.1f} ms  {layer:28s} {top}")


def by_layer(times: collections.Counter, info: dict) -> list:
    """[("encoder/conv2 backward", (ms, its three largest op kinds)), ...], largest first:
    each op's time under the model layer its source names, forward or backward (a
    `transpose(` in the source is the backward pass)."""
    sums, kinds = collections.Counter(), collections.defaultdict(collections.Counter)
    for name, ms in times.items():
        source = info.get(name, ("", ""))[1]
        layer = re.search(r"(encoder|decoder|memory|repair)/(\w+)", source)
        where = f"{layer[1]}/{layer[2]}" if layer else ("other" if source else "?")
        key = f"{where} {'backward' if 'transpose(' in source else 'forward'}"
        sums[key] += ms
        kinds[key][name.split(".")[0]] += ms
    return [
        (key, (ms, ", ".join(f"{k} {t:.0f}" for k, t in kinds[key].most_common(3))))
        for key, ms in sums.most_common()
    ]


if __name__ == "__main__":
    main()
