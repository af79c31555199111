"""Where the computation runs: virtual CPU devices and multi-process (multi-host) start-up.

Both must run before the first JAX computation.
"""

import os

from cmaae_jax import errors

AUTO_CPU_DEVICES = 2
# config train.cpu_scheduler: the order XLA:CPU gives a training step's instructions. `memory`
# keeps fewer temporary buffers alive at once (less host memory, BENCHMARKS.md); `default` is
# XLA's own order. Other platforms ignore it.
CPU_SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "default": None}


class DeviceError(errors.UserError, ValueError):
    """An impossible device setting."""


def set_cpu_devices(n: int):
    """Splits the CPU into `n` virtual JAX devices (0: JAX's default, one device; -1: auto).

    The training step is pmapped, so each virtual device runs its share of the batch; the
    shares run concurrently and keep the cores busy where one program leaves them idle
    (BENCHMARKS.md has the measured effect). Auto means `AUTO_CPU_DEVICES`, unless XLA_FLAGS
    already sets --xla_force_host_platform_device_count. Other backends (GPU, TPU) are
    unaffected.
    """
    if n < -1:
        raise DeviceError(f"--cpu_devices={n}: must be >= 0, or -1 for auto")
    if n == -1:
        forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        n = 0 if forced else AUTO_CPU_DEVICES
    if n:
        import jax  # after the caller's environment is final

        jax.config.update("jax_num_cpu_devices", n)


def cpu_compiler_options(scheduler: str, platform: str) -> dict | None:
    """XLA compiler options for a computation compiled for `platform` ("cpu", "gpu", ...):
    the CPU scheduler `scheduler` (a key of `CPU_SCHEDULERS`) on a CPU, nothing elsewhere."""
    value = CPU_SCHEDULERS[scheduler]
    if platform != "cpu" or value is None:
        return None
    return {"xla_cpu_scheduler_type": value}


def maybe_initialize_distributed(coordinator: str, num_processes: int, process_id: int):
    """`jax.distributed.initialize` for a multi-process launch (flags or JAX_* env)."""
    import jax

    if coordinator or num_processes > 1:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
