"""Shared set-up of the launch scripts: import path, multi-host initialisation, user errors."""

import contextlib
import errno
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so that configs can `from configs import default`


AUTO_CPU_DEVICES = 2


def set_cpu_devices(n: int):
    """Splits the CPU into `n` virtual JAX devices (0: JAX's default, one device; -1: auto).

    The training step is pmapped, so each virtual device runs its share of the batch; the
    shares run concurrently and keep the cores busy where one program leaves them idle: on
    the 2-core development machine 2 devices trained 1.36-1.56x faster than one
    (BENCHMARKS.md). Auto means `AUTO_CPU_DEVICES`, unless XLA_FLAGS already sets
    --xla_force_host_platform_device_count. Must run before any JAX computation; other
    backends (GPU, TPU) are unaffected.
    """
    if n < -1:
        print(f"error: --cpu_devices={n}: must be >= 0, or -1 for auto", file=sys.stderr)
        sys.exit(2)
    if n == -1:
        forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        n = 0 if forced else AUTO_CPU_DEVICES
    if n:
        import jax  # noqa: PLC0415

        jax.config.update("jax_num_cpu_devices", n)


def define_cpu_devices_flag():
    """The absl flag `--cpu_devices` of the training entry points (see `set_cpu_devices`)."""
    from absl import flags  # noqa: PLC0415

    return flags.DEFINE_integer(
        "cpu_devices", -1, "Virtual CPU devices (0: one, JAX's default; -1: auto, see _common)."
    )


def maybe_initialize_distributed(coordinator: str, num_processes: int, process_id: int):
    """`jax.distributed.initialize` for a multi-process launch (flags or JAX_* env)."""
    import jax  # noqa: PLC0415

    if coordinator or num_processes > 1:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def parse_flags(argv):
    """absl's flag parsing (`app.run(main, flags_parser=...)`); a config file that does not
    load, or a --config override that names no field, is one line and exit 2 (ml_collections
    raises a traceback for both)."""
    from absl import app, flags  # noqa: PLC0415

    try:
        args = app.parse_flags_with_usage(argv)
        if "config" in flags.FLAGS:
            flags.FLAGS["config"].value.keys()  # a file that failed to load raises here
    except (AttributeError, KeyError) as e:
        cause = e.args[0] if e.args else e
        cause = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        print(f"error: unknown config field in a --config override: {cause}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return args


@contextlib.contextmanager
def user_errors():
    """Bad input (config, data, checkpoint) ends with one clear line and exit code 2."""
    from cmaae_jax import checkpoint, configlib, datasets, images  # noqa: PLC0415

    try:
        yield
    except (
        configlib.ConfigError,
        datasets.DatasetError,
        images.ImageError,
        checkpoint.CheckpointError,
        FileNotFoundError,
        FloatingPointError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"error: disk full: {e}", file=sys.stderr)
        sys.exit(2)
