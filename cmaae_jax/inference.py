"""Restoring a trained model and mapping batches of images to anomaly maps."""

import jax
import numpy as np

from cmaae_jax import checkpoint, images, model, scoring
from cmaae_jax import state as state_lib
from cmaae_jax import workdir as workdir_lib


def restore_variables(config, workdir, step: int | None = None):
    """(checkpoint step, {'params', 'batch_stats'}) of the newest (or given) checkpoint."""
    net = model.from_config(config)
    mgr = checkpoint.manager(workdir, async_save=False)
    try:
        found = state_lib.restore_state(config, net, mgr, step)
    finally:
        mgr.close()
    if found is None:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {workdir_lib.checkpoints_dir(workdir)}: train first with "
            f"launch/train.py --workdir {workdir}"
        )
    s, state, _ = found
    return s, {"params": state.params, "batch_stats": state.batch_stats}


class Scorer:
    """Maps uint8 images [N,S,S,3] to anomaly maps [N,S,S] in fixed-size device batches.

    Every call is padded to the same batch shape, so the map function compiles once.
    """

    def __init__(self, config, variables):
        self.net = model.from_config(config)
        self.devices = jax.local_device_count()
        self.chunk = config.score.batch_images * self.devices
        pmapped = self.devices > 1
        self.fn = scoring.make_map_fn(
            self.net,
            config.score.method,
            tuple(config.score.scales),
            pmapped,
            normalize=config.score.get("normalize", "none"),
        )
        self.variables = scoring.replicate(variables) if pmapped else variables

    def __call__(self, images_NxSxSx3_u8) -> np.ndarray:
        out = []
        for lo in range(0, len(images_NxSxSx3_u8), self.chunk):
            chunk = images_NxSxSx3_u8[lo : lo + self.chunk]
            padded, n = scoring.pad_batch(
                np.asarray(images.to_float(chunk), np.float32), self.chunk
            )
            maps = scoring.apply_sharded(
                self.fn, self.variables, padded, self.devices if self.devices > 1 else None
            )
            out.append(np.asarray(maps[:n]))
        return (
            np.concatenate(out)
            if out
            else np.zeros((0,) + images_NxSxSx3_u8.shape[1:3], np.float32)
        )

    def batches(self, images_NxSxSx3_u8):
        """Yields (start index, maps) chunk by chunk (bounded memory on large test sets)."""
        for lo in range(0, len(images_NxSxSx3_u8), self.chunk):
            yield lo, self(images_NxSxSx3_u8[lo : lo + self.chunk])
