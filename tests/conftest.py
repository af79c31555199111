"""Test set-up: four virtual CPU devices, set before jax is imported anywhere."""

import os

# LLVM's optimisation level. The tests in this process compile many tiny programs and run
# each a few times: at 0 compiling is fastest (a cold tiny training run: 36 s at the default
# level, 25 s at 0, measured). The end-to-end test's launch scripts train and score for tens
# of steps, where 1 is faster in all (its training: 45 s at 0, 31 s at 1, 34 s at 2; its
# evaluation 9.3 s and 8.1 s; cold caches, measured). Results are unchanged in kind;
# subprocesses whose results are compared with this process's bit for bit
# (tests/test_reliability.py, tests/test_multihost.py) or that run the tiny config's few
# steps (tests/test_console.py: its programs are then this process's, from the cache) are
# built at IN_PROCESS_LEVEL.
IN_PROCESS_LEVEL, SUBPROCESS_LEVEL = 0, 1


def xla_flags(devices: int, level: int = SUBPROCESS_LEVEL) -> str:
    """XLA_FLAGS for a test subprocess with `devices` virtual CPU devices."""
    return (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level={level}"
    )


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " " + xla_flags(4, IN_PROCESS_LEVEL)
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _machine_fingerprint() -> str:
    """This CPU's model and features and the jaxlib version, hashed: programs compiled for one
    machine are never loaded on another (a shared /tmp can outlive a change of CPU)."""
    import hashlib
    import importlib.metadata
    import pathlib

    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines(keepends=True)
        cpu = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        cpu = []
    text = "".join(cpu) + importlib.metadata.version("jaxlib")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Compiled programs are reused across tests (and runs on this machine): the same tiny training
# step is built by several tests, and compiling it dominates their time on a 2-core CPU.
# Every program is kept, however quick to compile: each training run clears JAX's in-memory
# caches between stages (`state.release_compiled_programs`), and the hundreds of small programs
# compiled again after that cost more than reading them back (a tiny training run in a warm
# process: 12.7 s keeping those over 0.5 s, 10.7 s keeping all; measured on a 2-core Zen 3).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", f"/tmp/cmaae_jax_test_cache/{_machine_fingerprint()}"
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `import configs`
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
MAGNETIC_TILE = SHARED / "datasets" / "magnetic_tile"


@pytest.fixture(scope="session")
def magnetic_tile_root():
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"real data not found at {MAGNETIC_TILE}")
    return MAGNETIC_TILE


def tiny_config(root, **overrides):
    """A seconds-scale training config on procedural 64x64 textures (4 virtual devices)."""
    from configs import default

    c = default.get_config()
    c.data.format = "synthetic"
    c.data.root = str(root)
    c.data.category = "noise"
    c.data.image_size = 64
    c.data.synthetic_num_train = 16
    c.data.synthetic_num_test = 8
    c.model.memory_size = 16
    c.model.latent_dim = 16  # the network is otherwise the real one; steps and compiles shrink
    c.anomaly.patch_size = 32
    c.anomaly.bank_size = 4
    # rect pastes compile a much smaller training step than the default blob (suite time);
    # blob itself is tested in test_gaaga.py
    c.anomaly.paste_shape = "rect"
    # score.reference=auto scores the training images too (more maps, more shapes to compile);
    # it is tested in test_reference.py
    c.score.reference = "none"
    c.train.batch_size = 16
    c.train.crops_per_image = 2
    c.train.stage1_steps = 4
    c.train.stage2_steps = 4
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.eval.val_fraction = 0.25
    # the quantile rule needs no pasted pass over the held-out images (suite time); the
    # default `pastes` rule is tested in test_keep_aspect.py and test_end_to_end.py
    c.eval.threshold_rule = "quantile"
    for k, v in overrides.items():
        section, field = k.split("__")
        c[section][field] = v
    return c


def untrained_workdir(root, **overrides):
    """A workdir with config.json and one checkpoint (step 1) of initial weights: no training.
    `overrides` as for `tiny_config`."""
    from cmaae_jax import checkpoint, model, state
    from cmaae_jax import workdir as workdir_lib

    config = tiny_config(root / "data", **overrides)
    root.mkdir(parents=True, exist_ok=True)
    workdir_lib.save_config(root, config)
    initial = state.init_state(config, model.from_config(config))
    mgr = checkpoint.manager(root, async_save=False)
    checkpoint.save(
        mgr, 1, initial.replace(step=initial.step + 1), state.checkpoint_meta(config, 1)
    )
    mgr.wait_until_finished()
    mgr.close()
    return root


class GreyScorer:
    """Anomaly map = grey level / 255: a fixed function of the image, in place of a model
    (monkeypatched over `inference.Scorer`)."""

    def __init__(self, config, variables):
        del config, variables

    @staticmethod
    def _maps(images_u8):
        return np.stack([np.asarray(im, np.float32).mean(-1) / 255.0 for im in images_u8])

    def __call__(self, images_u8):
        return self._maps(images_u8)

    def batches(self, images_u8):
        for lo in range(0, len(images_u8), 3):
            idx = np.arange(lo, min(lo + 3, len(images_u8)))
            yield idx, self._maps([images_u8[i] for i in idx])
