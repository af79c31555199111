"""Restoring a trained model and mapping batches of images to anomaly maps."""

import copy

import jax
import numpy as np

from cmaae_jax import checkpoint, images, map_levels, model, score_options, scoring, spread
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
    params = state_lib.eval_params(state, config.score.get("weights", "average"))
    return s, {"params": params, "batch_stats": state.batch_stats}


class Scorer:
    """Maps uint8 images to anomaly maps of their size, in fixed-size device batches.

    Images come as one array [N, H, W, 3] or as a list of [H_i, W_i, 3] (keep_aspect Splits;
    sides multiples of 64). A list is grouped by shape and each group scored in batches of
    the same fixed size, so the map function compiles once per distinct shape; the maps come
    back in input order. With several devices, a chunk of at most half the fixed size (one
    image to predict, the rest of a shape group) is scored image by image with the work of
    each image split over the devices (`make_map_fn(spread=True)`) instead of being padded
    with blank images: a single image costs one image's work, not a chunk's. On CPU devices
    every chunk is scored so (`spread_every_chunk`): there it was also faster for full
    chunks (BENCHMARKS.md, eighteenth session); accelerators take whole images per device.
    """

    def __init__(self, config, variables, components: bool = False, with_raw_msfr: bool = False):
        """`components`: maps [..., H, W, 2] of `msfr_pixel`'s parts (`score_options.COMPONENTS`),
        for a reference that z-scores each (reference.py); the device hands out the raw parts
        and each is divided by its image's median here (`map_levels.over_median_on_host`), as
        is each map of `score.normalize=median` (without `score.flip`, which averages maps
        already divided). `with_raw_msfr` (with `components`): [..., H, W, 3], the raw MSFR
        map first (score.method=msfr's), for a decision on it from the same pass."""
        self.net = model.for_local_devices(model.from_config(config))  # scores only here
        self.devices = jax.local_device_count()
        self.chunk = config.score.batch_images * self.devices
        pmapped = self.devices > 1
        options = dict(score_options.map_options(config.score), components=components)
        options["raw_parts"] = components
        self.median_on_host = options["normalize"] == "median" and options["flip"] == "none"
        if self.median_on_host:
            options["normalize"] = "none"
        self.parts = (len(score_options.COMPONENTS) + with_raw_msfr,) if components else ()
        self.with_raw_msfr = with_raw_msfr
        self.fn = scoring.make_map_fn(self.net, pmapped=pmapped, **options)
        self.variables = spread.replicate(variables) if pmapped else variables
        self.spread_fn = scoring.make_map_fn(self.net, spread=True, **options) if pmapped else None
        self.spread_variables = spread.put_variables(variables) if pmapped else None
        self.spread_every_chunk = pmapped and jax.local_devices()[0].platform == "cpu"

    def without_raw_msfr(self) -> "Scorer":
        """This scorer (`with_raw_msfr`) giving the parts alone, [..., H, W, 2], from the same
        compiled functions."""
        view = copy.copy(self)
        view.with_raw_msfr, view.parts = False, (len(score_options.COMPONENTS),)
        return view

    def _finished(self, maps) -> np.ndarray:
        """The device's maps of a chunk as handed out: raw parts, or the maps of
        `score.normalize=median`, over their medians."""
        maps = np.asarray(maps)
        if not (self.median_on_host or self.parts):
            return maps
        divided = map_levels.over_median_on_host(maps)
        return np.concatenate([maps[..., :1], divided], -1) if self.with_raw_msfr else divided

    def _one_by_one(self, chunk_u8) -> np.ndarray | None:
        """Maps of a chunk scored image by image over all devices, or None if it goes to the
        pmapped function (one device; or a chunk over half the fixed size off CPU)."""
        if self.spread_fn is None:
            return None
        if not self.spread_every_chunk and len(chunk_u8) > self.chunk // 2:
            return None
        floats = np.asarray(images.to_float(chunk_u8), np.float32)
        return np.concatenate(
            [np.asarray(self.spread_fn(self.spread_variables, x[None])) for x in floats]
        )

    def _stacked(self, images_NxHxWx3_u8) -> np.ndarray:
        """Maps [N, H, W] of images [N, H, W, 3] of one shape."""
        out = []
        for lo in range(0, len(images_NxHxWx3_u8), self.chunk):
            chunk = images_NxHxWx3_u8[lo : lo + self.chunk]
            spread_maps = self._one_by_one(chunk)
            if spread_maps is not None:
                out.append(self._finished(spread_maps))
                continue
            padded, n = spread.pad_batch(np.asarray(images.to_float(chunk), np.float32), self.chunk)
            maps = spread.apply_sharded(
                self.fn, self.variables, padded, self.devices if self.devices > 1 else None
            )
            out.append(self._finished(maps[:n]))
        return (
            np.concatenate(out)
            if out
            else np.zeros((0,) + images_NxHxWx3_u8.shape[1:3] + self.parts, np.float32)
        )

    def __call__(self, images_u8):
        """Maps float32 [N, H, W] of an array [N, H, W, 3]; of a list of images, the list of
        their maps [H_i, W_i] (stacked into [N, H, W] when every image has the same shape)."""
        if not isinstance(images_u8, (list, tuple)):
            return self._stacked(images_u8)
        out = [None] * len(images_u8)
        for idx, maps in self.batches(images_u8):
            for j, i in enumerate(idx):
                out[i] = maps[j]
        if len({m.shape for m in out}) > 1:
            return out
        return np.stack(out) if out else np.zeros((0, 0, 0), np.float32)

    def batches(self, images_u8):
        """Yields (indices, maps [G, H, W]) chunk by chunk (bounded memory on large test sets):
        `maps[j]` is the map of `images_u8[indices[j]]`. An array gives consecutive chunks in
        order; a list gives chunks of one shape each, a shape group after the other."""
        if not isinstance(images_u8, (list, tuple)):
            for lo in range(0, len(images_u8), self.chunk):
                chunk = images_u8[lo : lo + self.chunk]
                yield np.arange(lo, lo + len(chunk)), self._stacked(chunk)
            return
        groups = {}
        for i, image in enumerate(images_u8):
            groups.setdefault(np.shape(image), []).append(i)
        for idx in groups.values():
            for lo in range(0, len(idx), self.chunk):
                part = np.asarray(idx[lo : lo + self.chunk])
                yield part, self._stacked(np.stack([images_u8[i] for i in part]))


def valid_maps(scorer, split, indices=None, bar=None) -> list:
    """The valid maps [h_i, w_i] of `split`'s images (all, or those at `indices`), in order."""
    indices = np.arange(split.num_images) if indices is None else np.asarray(indices)
    images = [split.images[i] for i in indices]
    out = [None] * len(indices)
    for idx, maps in scorer.batches(images):
        for j, m in zip(idx, maps, strict=True):
            out[j] = split.valid_map(int(indices[j]), m)
        if bar is not None:
            bar.update(len(idx))
    return out


def rescorer(config, variables):
    """(method, components) -> a scorer of `variables` with `config`'s score options and that
    map method (`evaluate.calibrate` resolving `score.method=auto`; `components`: msfr_pixel's
    parts, for a reference of each)."""

    def build(method, components=False, with_raw_msfr=False):
        changed = copy.deepcopy(config)
        with changed.unlocked():
            changed.score.method = method
        return Scorer(changed, variables, components, with_raw_msfr)

    return build
