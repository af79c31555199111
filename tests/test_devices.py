"""cmaae_jax/devices.py: virtual CPU devices, set in a fresh process (before JAX starts)."""

import os
import pathlib
import subprocess
import sys

import pytest

from cmaae_jax import devices

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the tests' 4 devices
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-c", f"from cmaae_jax import devices; {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cpu_devices_splits_the_cpu():
    proc = _python("devices.set_cpu_devices(3); import jax; print(jax.local_device_count())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "3"
    proc = _python("devices.set_cpu_devices(0); import jax; print(jax.local_device_count())")
    assert proc.stdout.split()[-1] == "1"
    auto = "devices.set_cpu_devices(-1); import jax; print(jax.local_device_count())"
    assert _python(auto).stdout.split()[-1] == "2"
    forced = "--xla_force_host_platform_device_count=3"  # a user's own setting wins over auto
    assert _python(auto, {"XLA_FLAGS": forced}).stdout.split()[-1] == "3"


def test_negative_cpu_devices_is_a_user_error():
    with pytest.raises(
        devices.DeviceError, match=r"^--cpu_devices=-2: must be >= 0, or -1 for auto$"
    ):
        devices.set_cpu_devices(-2)


TCMALLOC = "libtcmalloc_minimal.so.4"


@pytest.mark.parametrize(
    "environ, system, library, expected",
    [
        ({}, "Linux", TCMALLOC, TCMALLOC),
        ({"LD_PRELOAD": "libfoo.so"}, "Linux", TCMALLOC, f"{TCMALLOC}:libfoo.so"),
        ({"LD_PRELOAD": "libjemalloc.so.2"}, "Linux", TCMALLOC, None),  # the user's choice
        ({"CMAAE_ALLOCATOR": "system"}, "Linux", TCMALLOC, None),  # opted out
        ({}, "Linux", None, None),  # not installed
        ({}, "Darwin", TCMALLOC, None),
    ],
)
def test_allocator_environment(environ, system, library, expected):
    env = devices.allocator_environment(environ, system, library)
    if expected is None:
        assert env is None
        return
    assert env["LD_PRELOAD"] == expected
    assert env["TCMALLOC_RELEASE_RATE"] == "1"
    rest = {k: v for k, v in env.items() if k not in devices.ALLOCATOR_SETTINGS}
    assert rest == {**environ, "LD_PRELOAD": expected}
    # the user's own tcmalloc settings win over the defaults
    env = devices.allocator_environment({"TCMALLOC_RELEASE_RATE": "10"}, system, library)
    assert env["TCMALLOC_RELEASE_RATE"] == "10"


@pytest.mark.parametrize(
    "preload, expected",
    [
        ("", "system"),
        ("libfoo.so", "system"),
        ("/usr/lib/libfoo.so:/usr/lib/libjemalloc.so.2", "libjemalloc.so.2"),
        (f"{TCMALLOC} libfoo.so", TCMALLOC),  # the loader also splits on spaces
    ],
)
def test_preloaded_allocator(preload, expected):
    assert devices.preloaded_allocator({"LD_PRELOAD": preload}) == expected


def test_allocator_choice_is_checked():
    with pytest.raises(devices.DeviceError, match=r"^CMAAE_ALLOCATOR='jemalloc': must be"):
        devices.allocator_environment({"CMAAE_ALLOCATOR": "jemalloc"}, "Linux", TCMALLOC)


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is Linux's")
def test_restart_with_allocator_reexecutes_once_with_the_same_arguments():
    # The child prints a line per start: with tcmalloc installed, a restart shows as two
    # starts, the second with it preloaded; the arguments after -c reach the restarted
    # process unchanged. Without it (a machine without libtcmalloc-minimal4) one start.
    import ctypes.util

    library = ctypes.util.find_library(devices.ALLOCATOR_LIBRARY)
    code = (
        "import os, sys; print('start', os.environ.get('LD_PRELOAD'), sys.argv[1:], "
        "flush=True); devices.restart_with_allocator(); print('running')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CMAAE_ALLOCATOR")}
    proc = subprocess.run(
        [sys.executable, "-c", f"from cmaae_jax import devices; {code}", "a", "--b=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    starts = ["start None ['a', '--b=1']"]
    if library:
        starts.append(f"start {library} ['a', '--b=1']")
    assert proc.stdout.splitlines() == [*starts, "running"]


# Frees 4096 blocks of 64 KB (256 MB) but the last (which keeps glibc's heap top in use, so
# that only an explicit trim returns the pages below it), then prints resident memory (MB)
# before and after `release_freed_host_memory`.
_FREED_THEN_RELEASED = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
blocks = [libc.malloc(65536) for _ in range(4096)]
for b in blocks:
    ctypes.memset(b, 1, 65536)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
devices.release_freed_host_memory()
print(before, rss())
"""


@pytest.mark.parametrize("allocator", ["system", "tcmalloc"])
def test_release_freed_host_memory_returns_freed_pages(allocator):
    env = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
    if allocator == "tcmalloc":
        import ctypes.util

        library = ctypes.util.find_library(devices.ALLOCATOR_LIBRARY)
        if library is None:
            pytest.skip("tcmalloc is not installed")
        # rate 0: tcmalloc keeps every freed page unless asked
        env = {"LD_PRELOAD": library, "TCMALLOC_RELEASE_RATE": "0"}
    proc = _python(_FREED_THEN_RELEASED, env)
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert before - after > 200, (before, after)  # most of the 256 MB freed went back
