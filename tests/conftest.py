"""Test set-up: four virtual CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
MAGNETIC_TILE = SHARED / "datasets" / "magnetic_tile"


@pytest.fixture(scope="session")
def magnetic_tile_root():
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"real data not found at {MAGNETIC_TILE}")
    return MAGNETIC_TILE
