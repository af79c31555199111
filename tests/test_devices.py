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
