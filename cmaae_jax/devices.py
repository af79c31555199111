"""Where the computation runs: virtual CPU devices and multi-process (multi-host) start-up,
both before the first JAX computation; and the host's allocator: the launchers' restart with
tcmalloc preloaded, and handing freed memory back to the OS.
"""

import ctypes
import os
import platform
import sys

from cmaae_jax import errors

AUTO_CPU_DEVICES = 2
# config train.cpu_scheduler: the order XLA:CPU gives a training step's instructions. `memory`
# keeps fewer temporary buffers alive at once (less host memory, BENCHMARKS.md); `default` is
# XLA's own order. Other platforms ignore it.
CPU_SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "default": None}


# A caching allocator preloaded by the launch scripts' restart (`restart_with_allocator`):
# XLA:CPU allocates a step's large temporary buffers afresh at every call, and glibc's malloc
# returns them to the kernel at every free, so a batch-512 training step page-faults ~250,000
# times (~1 GB zeroed); tcmalloc keeps them (BENCHMARKS.md, sixteenth session). Debian and
# Ubuntu ship it as libtcmalloc-minimal4 (gperftools elsewhere); without it nothing changes.
ALLOCATOR_LIBRARY = "tcmalloc_minimal"
# `system` keeps the process's own malloc (no restart); unset or `tcmalloc` preloads it.
ALLOCATOR_ENV = "CMAAE_ALLOCATOR"
# tcmalloc's settings, unless the environment sets them: its default pace of returning freed
# memory to the kernel (a training step's buffers are reused, not faulted in again at every
# call as at rate 10; BENCHMARKS.md, forty-fifth session; what set-up freed is handed back at
# once by `release_freed_host_memory`), and no "large alloc" report on stderr for a dataset
# array over 1 GB.
ALLOCATOR_SETTINGS = {
    "TCMALLOC_RELEASE_RATE": "1",
    "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40),
}


def allocator_environment(environ, system: str, library: str | None) -> dict | None:
    """The environment to restart a process with so that `library` (a shared library's
    name or path; None: not installed) replaces malloc, or None where nothing is to change:
    not Linux, opted out (`CMAAE_ALLOCATOR=system`), or an allocator already preloaded."""
    choice = environ.get(ALLOCATOR_ENV, "tcmalloc")
    if choice not in ("tcmalloc", "system"):
        raise DeviceError(f"{ALLOCATOR_ENV}={choice!r}: must be tcmalloc or system")
    preload = environ.get("LD_PRELOAD", "")
    if system != "Linux" or choice == "system" or library is None:
        return None
    if preloaded_allocator(environ) != "system":  # the user's own choice stands
        return None
    env = {**ALLOCATOR_SETTINGS, **environ}
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    return env


def preloaded_allocator(environ) -> str:
    """The malloc replacement `LD_PRELOAD` names (its first entry with "malloc" in its name:
    tcmalloc, jemalloc, mimalloc), or "system"."""
    for lib in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":"):
        if "malloc" in lib:
            return os.path.basename(lib)
    return "system"


def release_freed_host_memory():
    """Hands the memory this process has freed back to the OS, so that what comes next (a
    training step's buffers after its compilation and the replicas' set-up) does not come on
    top of it in the peak: tcmalloc's free pages where it is preloaded (it keeps them
    otherwise, and a step's buffers did not always reuse them: BENCHMARKS.md, forty-fifth
    session), and glibc's (`malloc_trim`); a no-op for what is not there."""
    try:
        process = ctypes.CDLL(None)
    except (OSError, TypeError):  # no process handle to look symbols up in (not POSIX)
        return
    for name, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (0,))):
        release = getattr(process, name, None)
        if release is not None:
            release(*args)


def restart_with_allocator():
    """Re-executes this process (same interpreter, options and arguments) with
    `allocator_environment`. The dynamic loader reads LD_PRELOAD only when a process starts,
    so an entry point calls this first, before any work; where nothing is to change it
    returns and the process goes on."""
    import ctypes.util

    library = ctypes.util.find_library(ALLOCATOR_LIBRARY)
    env = allocator_environment(os.environ, platform.system(), library)
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


# orbax synchronises processes (checkpoint manager set-up and saves, `replicas.compile_step`)
# by default with a device collective, whose gloo set-up fails when one process arrives 30 s
# after the others (seen in CI: one process still compiling on loaded cores); with this absl
# flag it waits at the coordination service's barrier instead, up to orbax's 300 s.
ORBAX_BARRIER_FLAG = "experimental_orbax_use_distributed_barrier"


def maybe_initialize_distributed(coordinator: str, num_processes: int, process_id: int):
    """`jax.distributed.initialize` for a multi-process launch (flags or JAX_* env); orbax's
    barriers then go through the coordination service (`ORBAX_BARRIER_FLAG`)."""
    import jax

    if coordinator or num_processes > 1:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()
    else:
        return
    _orbax_barriers_through_coordinator()


def _orbax_barriers_through_coordinator():
    """Sets `ORBAX_BARRIER_FLAG` (orbax defines it on import); absl flags not parsed yet (a
    launcher that parses its own arguments) are marked parsed first, as orbax reads them."""
    import orbax.checkpoint  # noqa: F401
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    setattr(flags.FLAGS, ORBAX_BARRIER_FLAG, True)
