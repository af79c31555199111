"""Where the computation runs: virtual CPU devices and multi-process (multi-host) start-up.

Both must run before the first JAX computation.
"""

import os
import platform
import sys

from cmaae_jax import errors

AUTO_CPU_DEVICES = 2
# config train.cpu_scheduler: the order XLA:CPU gives a training step's instructions. `memory`
# keeps fewer temporary buffers alive at once (less host memory, BENCHMARKS.md); `default` is
# XLA's own order. Other platforms ignore it.
CPU_SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "default": None}


# glibc's malloc tunable that backs its large (mmap'd) allocations with transparent huge
# pages. XLA:CPU allocates a step's temporary buffers afresh each call; with 4 KiB pages a
# batch-512 training step page-faults ~250,000 times (BENCHMARKS.md, sixteenth session).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# Set to 0 to keep the process's own malloc settings (no re-execution).
HUGE_PAGES_ENV = "CMAAE_HUGE_PAGES"


def huge_pages_environment(environ, system: str, libc: str) -> dict | None:
    """The environment to restart a process with so that glibc uses huge pages for large
    allocations, or None where nothing is to change: not Linux with glibc, opted out
    (`CMAAE_HUGE_PAGES=0`), or the tunable already set (by the user or by a restart)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if system != "Linux" or libc != "glibc" or environ.get(HUGE_PAGES_ENV, "1") == "0":
        return None
    if "glibc.malloc.hugetlb" in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return env


def restart_with_huge_pages():
    """Re-executes this process (same interpreter and argv) with `huge_pages_environment`.

    glibc reads its tunables only when a process starts, so an entry point calls this first,
    before any work; where nothing is to change it returns and the process goes on."""
    env = huge_pages_environment(os.environ, platform.system(), platform.libc_ver()[0])
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


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
