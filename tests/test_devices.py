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


@pytest.mark.parametrize(
    "environ, system, libc, expected",
    [
        ({}, "Linux", "glibc", "glibc.malloc.hugetlb=1"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
            "Linux",
            "glibc",
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
        ),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "Linux", "glibc", None),  # the user's
        ({"CMAAE_HUGE_PAGES": "0"}, "Linux", "glibc", None),  # opted out
        ({}, "Darwin", "", None),
        ({}, "Linux", "", None),  # musl: no glibc tunables
    ],
)
def test_huge_pages_environment(environ, system, libc, expected):
    env = devices.huge_pages_environment(environ, system, libc)
    if expected is None:
        assert env is None
    else:
        assert env["GLIBC_TUNABLES"] == expected
        assert {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"} == {
            k: v for k, v in environ.items() if k != "GLIBC_TUNABLES"
        }


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables are Linux's")
def test_restart_with_huge_pages_reexecutes_once_with_the_same_arguments():
    # The child prints a line per start: a restart shows as two starts, the second with the
    # tunable set; the arguments after -c reach the restarted process unchanged.
    code = (
        "import os, sys; print('start', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], "
        "flush=True); devices.restart_with_huge_pages(); print('running')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CMAAE_HUGE_PAGES")}
    proc = subprocess.run(
        [sys.executable, "-c", f"from cmaae_jax import devices; {code}", "a", "--b=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "start None ['a', '--b=1']",
        "start glibc.malloc.hugetlb=1 ['a', '--b=1']",
        "running",
    ]
