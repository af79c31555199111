"""Where the training step's time goes, per XLA op, summed over the device threads.

    python scripts/profile_step.py --batch 512 [--trace-dir /tmp/step_trace] [--top 70]

Builds the benchmark's stage-1 step (64x64 images, one crop each, 2 virtual CPU devices,
the default config), compiles it as `train.train` does, runs 3 steps, traces 2 with
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


def traced_step(batch: int, trace_dir: str):
    import jax
    import numpy as np

    from cmaae_jax import model, train
    from cmaae_jax import state as state_lib
    from configs import default

    config = default.get_config()
    config.data.image_size, config.train.crops_per_image = 64, 1
    config.train.batch_size = batch
    d = jax.local_device_count()
    net = model.from_config(config)
    state = state_lib.init_state(config, net)
    step = train.make_train_step(config, net, 1, state_lib.make_optimizer(config, state.params, 1))
    images = np.random.default_rng(0).integers(0, 256, (d, batch // d, 64, 64, 3), np.uint8)
    args = (jax.pmap(lambda x: x)(images), train.replicate(jax.numpy.zeros((1, 1, 1, 3))))
    args = (*args, train.replicate(jax.random.key(0)))
    state = train.replicate(state)
    compiled = train.compile_step(step, state, args, cpu_scheduler=config.train.cpu_scheduler)
    for _ in range(3):  # warm-up
        state, metrics = compiled(state, *args)
        jax.block_until_ready(metrics)
    jax.profiler.start_trace(trace_dir)
    for _ in range(2):  # traced
        state, metrics = compiled(state, *args)
        jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    return compiled.as_text()


def op_times(trace_dir: str) -> collections.Counter:
    import jax

    path = glob.glob(trace_dir + "/**/*.xplane.pb", recursive=True)[0]
    times = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" in line.name or "PjRtCpuClient" in line.name:
                for event in line.events:
                    if not event.name.startswith("ThunkExecutor"):
                        times[event.name] += event.duration_ns / 2e6  # ms per step (2 steps)
    return times


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
    args = ap.parse_args()
    if glob.glob(args.trace_dir + "/**/*.xplane.pb", recursive=True):
        sys.exit(f"{args.trace_dir} already holds a trace: give an empty --trace-dir")
    info = hlo_info(traced_step(args.batch, args.trace_dir))
    times = op_times(args.trace_dir)
    print(f"all ops: {sum(times.values()):.1f} ms per step (device threads summed)")
    for name, ms in times.most_common(args.top):
        shape, source = info.get(name, ("", ""))
        print(f"{ms:8.1f} ms  {name[:32]:32s} {shape:40s} {source}")
    kinds = collections.Counter()
    for name, ms in times.items():
        kinds[name.split(".")[0]] += ms
    print("\nby kind:")
    for kind, ms in kinds.most_common(25):
        print(f"{ms:8.1f} ms  {kind}")


if __name__ == "__main__":
    main()
