"""Speed of the library's training step and MSFR inference, comparable to the PyTorch reference.

Like `../shared/bench/torch_reference.py` it uses the Table I architecture, a memory of 500
items, Adam(2e-4, 0.5, 0.999), one fixed batch of 64x64 patches made before timing, and MSFR
maps of 512x512 images. It times the library's own code: the pmapped training step of
`train.make_train_step` (stage 1, `crops_per_image=1` on 64x64 images, so the batch of
patches is exactly the batch of images) and the jitted image-to-map function of
`scoring.make_map_fn`; every timing is taken after warm-up and `block_until_ready`.
`launch/benchmark.py` is its command line.
"""

import copy
import dataclasses
import os
import platform
import resource
import statistics
import time

import jax
import numpy as np

from cmaae_jax import (
    conv_chunks,
    devices,
    gaaga,
    model,
    replicas,
    scoring,
    sharded_state,
    spread,
    train,
)
from cmaae_jax import state as state_lib


@dataclasses.dataclass
class Options:
    """What to time (launch/benchmark.py's flags)."""

    batch: int = 512  # global training batch (patches)
    steps: int = 5  # timed training calls (of steps_per_call steps each)
    warmup: int = 2  # untimed calls after the compiling one
    memory: int = 500  # memory items N
    image_size: int = 512  # MSFR / GAAGA image side
    infer_images: int = 4  # timed MSFR calls
    infer_batch: int = 4  # images per batched MSFR call
    infer_stride: int = 64  # MSFR window stride (score.stride; 64: the reference's grid)
    gaaga_batch: int = 8  # GAAGA images per call (0: skip)
    gaaga_steps: int = 3  # timed GAAGA calls
    dtype: str = "float32"  # float32 | bfloat16
    conv_impl: str = "auto"  # auto | matmul | xla
    remat: str = "none"  # none | conv_outputs (train.remat)
    cpu_scheduler: str = "memory"  # memory | default (train.cpu_scheduler)
    steps_per_call: int = 4  # training steps per device call (train.steps_per_call)
    skip_infer: bool = False  # training only


def cpu_seconds():
    """(system-wide busy CPU s from /proc/stat, this process's CPU s); as the reference."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    own_s = own.ru_utime + own.ru_stime
    try:
        with open("/proc/stat") as fh:
            v = [int(t) for t in fh.readline().split()[1:9]]
    except OSError:
        return None, own_s
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), own_s


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, n, stats=None):
    """Wall seconds of n calls of `fn` (each one blocks on its result).

    If `stats` is a dict, it receives this process's CPU seconds and minor page faults per
    call (lists): CPU time is less sensitive than wall time to other processes on the cores.
    """
    out = []
    for _ in range(n):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if stats is not None:
            cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            stats.setdefault("cpu_s", []).append(cpu)
            stats.setdefault("faults", []).append(r1.ru_minflt - r0.ru_minflt)
    return out


def conv_macs(image_side: int, encoder_layers: int | None = None, latent_dim: int = 512):
    """Multiply-accumulates of the convolutions (Table I) for one square input, by layer walk.

    Counts useful MACs only (a transposed conv: input pixels x cin x cout x k^2); the memory,
    the gates and BatchNorm (< 2% of the total) are left out. `encoder_layers` None: the
    whole network on a 64x64 patch (encoder + decoder); otherwise the first that many encoder
    layers on an `image_side` image (MSFR features).
    """
    from cmaae_jax import model

    macs, side, cin = 0, image_side, 3
    for f, k, stride, pad, _, _ in model.ENCODER[: encoder_layers or len(model.ENCODER)]:
        cout = f or latent_dim
        side = (side + 2 * pad - k) // stride + 1
        macs += side * side * cout * k * k * cin
        cin = cout
    if encoder_layers is None:
        for cout, k, stride, pad in model.DECODER:
            macs += side * side * cin * cout * k * k
            side = (side - 1) * stride - 2 * pad + k
            cin = cout
    return macs


def model_gflop(args):
    """Useful GFLOP (2 x MACs) of one training step and of one MSFR map, as the reference
    computes them: every window whole (the library's map cuts the windows' layers 1-3 from
    the image's, `window_features`, so its `msfr_gflops` is the reference's work per second)."""
    patch = 2 * conv_macs(64)
    # training: forward, input gradient and weight gradient each cost one forward's MACs
    train = 3 * patch * args.batch
    s = args.image_size
    windows = ((s - 64) // args.infer_stride + 1) ** 2
    msfr = patch * windows + 2 * 2 * conv_macs(s, encoder_layers=3)
    return {"train_step_gflop": train / 1e9, "msfr_gflop_per_image": msfr / 1e9}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate (median of `repeats` n x n x n products), GFLOP/s."""
    a = jax.numpy.ones((n, n), jax.numpy.float32)
    dot = jax.jit(jax.numpy.dot)
    jax.block_until_ready(dot(a, a))
    t = timed(lambda: jax.block_until_ready(dot(a, a)), repeats)
    return 2.0 * n**3 / statistics.median(t) / 1e9


def stage1_step(args, base_config):
    """The benchmark's training step, compiled ahead from the replicas' shapes as
    `replicas.compiled_with_replicas` compiles it, here before the state is even initialised:
    stage 1 on 64x64 images, one crop each (the batch of patches is the batch of images), as
    `args` (Options) set it. Returns (net, compiled step, compile seconds, replicated state,
    step args (images, bank, key) on the devices)."""
    config = copy.deepcopy(base_config)
    config.data.image_size = 64
    config.train.crops_per_image = 1
    config.train.batch_size = args.batch
    config.model.memory_size = args.memory
    config.model.dtype = args.dtype
    config.model.conv_impl = args.conv_impl
    config.train.remat = args.remat
    d = jax.local_device_count()
    if args.batch % d:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the {d} local devices")
    net = model.from_config(config)
    rng = np.random.default_rng(0)
    k = args.steps_per_call
    per_call = (k,) if k > 1 else ()
    images = rng.integers(0, 256, (d, *per_call, args.batch // d, 64, 64, 3), dtype=np.uint8)
    images = jax.pmap(lambda x: x)(images)  # on device once, sharded as the step wants
    bank = replicas.replicate(jax.numpy.zeros((1, 1, 1, 3)))
    key = jax.random.split(jax.random.key(0), k) if k > 1 else jax.random.key(0)
    key = replicas.replicate(key)
    state_shapes = jax.eval_shape(lambda: state_lib.init_state(config, net))
    tx = state_lib.make_optimizer(config, state_shapes.params, 1)
    if k > 1:
        step_fn = train.make_multi_step(config, net, 1, tx, steps=k)
    else:
        step_fn = train.make_train_step(config, net, 1, tx)
    t0 = time.perf_counter()
    shapes = sharded_state.shapes(state_shapes)
    step_fn = replicas.compile_step(step_fn, shapes, (images, bank, key), "", args.cpu_scheduler)
    compile_s = time.perf_counter() - t0
    rstate = sharded_state.place(state_lib.init_state(config, net))  # no host copy kept
    state_lib.release_compiled_programs()  # init's and replication's, as training frees them
    return net, step_fn, compile_s, rstate, (images, bank, key)


def bench_train(args, base_config):
    net, step_fn, compile_s, rstate, step_args = stage1_step(args, base_config)
    holder = {"state": rstate}
    del rstate

    def one_step():
        holder["state"], metrics = step_fn(holder["state"], *step_args)
        jax.block_until_ready((holder["state"], metrics))
        return metrics

    analysis = step_fn.memory_analysis()  # XLA's buffer sizes, per device (None: unknown)
    temp_mb = analysis.temp_size_in_bytes / 1e6 if analysis is not None else None
    t0 = time.perf_counter()
    metrics = one_step()
    first = compile_s + time.perf_counter() - t0
    k = args.steps_per_call
    warm = [t / k for t in timed(one_step, args.warmup)]
    stats = {}
    steps = [t / k for t in timed(one_step, args.steps, stats)]  # per step
    stats = {name: [v / k for v in values] for name, values in stats.items()}
    steps_done = int(np.asarray(holder["state"].step)[0])
    loss = float(np.asarray(metrics["loss"])[0])
    if not np.isfinite(loss):
        raise SystemExit(f"training loss is not finite: {loss}")
    median = statistics.median(steps)
    s = holder["state"]
    variables = replicas.unreplicate_to_host({"params": s.params, "batch_stats": s.batch_stats})
    return (
        net,
        variables,
        {
            "train_first_step_s": first,
            "compile_s": max(first - k * median, 0.0),
            "train_steps_per_s": len(steps) / sum(steps),
            "train_patches_per_s": len(steps) * args.batch / sum(steps),
            "train_steps_per_call": k,
            "train_steps_done": steps_done,  # the state's step counter after every call
            "train_step_s_median": median,
            "train_step_s_all": [round(t, 4) for t in steps],
            "train_warmup_s_all": [round(t, 4) for t in warm],
            "train_step_cpu_s_median": statistics.median(stats["cpu_s"]),
            "train_step_page_faults_median": statistics.median(stats["faults"]),
            "train_peak_rss_mb": peak_rss_mb(),
            "train_step_temp_mb_per_device": temp_mb,
        },
    )


def bench_infer(args, net, variables):
    s = args.image_size
    # As the Scorer maps a few images: each call's work split over the local devices, the
    # convolutions those devices' (`model.for_local_devices`).
    net = model.for_local_devices(net)
    map_fn = scoring.make_map_fn(net, "msfr", (1, 2, 3), spread=True, stride=args.infer_stride)
    variables = spread.put_variables(variables)
    rng = np.random.default_rng(1)
    out = {}
    for label, b in (("", 1), ("_batched", args.infer_batch)):
        if label and b <= 1:
            continue
        imgs = jax.numpy.asarray(rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32))
        t0 = time.perf_counter()
        amap = jax.block_until_ready(map_fn(variables, imgs))
        first = time.perf_counter() - t0
        if amap.shape != (b, s, s) or not bool(jax.numpy.isfinite(amap).all()):
            raise SystemExit(f"MSFR map has shape {amap.shape} or non-finite values")
        stats = {}
        t = timed(
            lambda imgs=imgs: jax.block_until_ready(map_fn(variables, imgs)),
            args.infer_images,
            stats,
        )
        ms = [1000.0 * x / b for x in t]
        cpu_ms = 1000.0 * statistics.median(stats["cpu_s"]) / b
        out[f"infer{label}_cpu_ms_per_image_median"] = cpu_ms
        out[f"infer{label}_page_faults_median"] = statistics.median(stats["faults"])
        out[f"infer{label}_batch"] = b
        out[f"infer{label}_ms_per_image_median"] = statistics.median(ms)
        out[f"infer{label}_ms_all"] = [round(x, 1) for x in ms]
        out[f"infer{label}_compile_s"] = first
        if not label:  # the reference's phases end here: one image at a time
            out["peak_rss_mb"] = peak_rss_mb()
    return out


def bench_gaaga(args):
    if args.gaaga_batch <= 0:
        return {}
    ips = gaaga.benchmark(args.image_size, args.gaaga_batch, args.gaaga_steps)
    return {"gaaga_images_per_s": ips, "gaaga_batch": args.gaaga_batch}


def run(args, base_config) -> dict:
    """Times training, MSFR and GAAGA as `args` (Options) say; returns the JSON object.

    `base_config` is the default config (configs/default.py); the benchmark changes the batch,
    memory size, dtype and convolution formulation, and trains on 64x64 images.
    """
    busy0, own0 = cpu_seconds()
    t_import = time.perf_counter()
    net, variables, result = bench_train(args, base_config)
    state_lib.release_compiled_programs()  # as train.train does after each stage
    if not args.skip_infer:
        result.update(bench_infer(args, net, variables))
    # The reference's phases (training, then MSFR maps of one image, read in bench_infer);
    # the batched maps, GAAGA and the matmul probe are ours (`run_peak_rss_mb` counts them).
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.update(bench_gaaga(args))
    result.update(model_gflop(args))
    result["matmul_f32_gflops"] = matmul_gflops()
    result["train_gflops"] = result["train_step_gflop"] / result["train_step_s_median"]
    if "infer_ms_per_image_median" in result:
        ms = result["infer_ms_per_image_median"]
        result["msfr_gflops"] = result["msfr_gflop_per_image"] / (ms / 1000.0)
    busy1, own1 = cpu_seconds()
    result = {**_header(args), **result}
    result["run_peak_rss_mb"] = peak_rss_mb()  # the whole run, GAAGA's benchmark included
    result["wall_s"] = time.perf_counter() - t_import
    if busy0 is not None:
        result["other_processes_cpu_s"] = round((busy1 - busy0) - (own1 - own0), 2)
    return result


def _header(args) -> dict:
    dev = jax.devices()[0]
    return {
        "framework": "jax",
        "jax_version": jax.__version__,
        # compile_s reads a persistent cache's hits where one is set (README, "Compiles")
        "compilation_cache": jax.config.jax_compilation_cache_dir or "",
        # the training step's chunk size, from this core's L2 cache (conv_chunks.CHUNK_ROWS)
        "chunk_rows": conv_chunks.CHUNK_ROWS,
        "l2_cache_bytes": conv_chunks.l2_cache_bytes(),
        "python": platform.python_version(),
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "batch": args.batch,
        "memory_size": args.memory,
        "image_size": args.image_size,
        "dtype": args.dtype,
        "conv_impl": args.conv_impl,
        "remat": args.remat,
        "cpu_scheduler": args.cpu_scheduler,
        "train_steps": args.steps,
        "warmup_steps": args.warmup,
        "infer_images": args.infer_images,
        "infer_stride": args.infer_stride,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_allocator": devices.preloaded_allocator(os.environ),
    }
