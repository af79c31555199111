"""Which training images each step sees: host-side, seeded by (seed, step), shard-aware.

`make_sampler` builds the run's `Sampler` over the decoded train split (`ArrayRows`) or, with
`data.stream`, over this process's shard of the on-disk `image_store.ImageStore`. The step
(train.py) crops and pastes on device; the sampler only chooses and hands over uint8 rows.
"""

import pathlib

import jax
import numpy as np

from cmaae_jax import datasets, image_store, images


class ArrayRows:
    """In-memory training images as a row source for `Sampler` (`data.stream=False`).

    Square-mode images come as one array [N, S, S, 3] (`sizes` None). keep_aspect images come
    as a list of [H_i, W_i, 3] with their valid sizes [N, 2]: each valid region is placed once
    in an S x S canvas (`canvas_size`) by reflection bottom/right. `image_store.ImageStore` is
    the on-disk source with the same `len`, `rows(idx)` and `sizes`.
    """

    num_shards = 1  # every process holds every image

    def __init__(self, train_images, sizes=None, canvas_size=0):
        self.sizes, self.images = None, train_images
        if isinstance(train_images, (list, tuple)):
            self.sizes = np.asarray(sizes, np.int32).reshape(len(train_images), 2)
            s = canvas_size or max(max(im.shape[:2]) for im in train_images)
            canvases = [
                images.pad_to(im[:h, :w], (s, s))
                for im, (h, w) in zip(train_images, self.sizes, strict=True)
            ]
            self.images = np.stack(canvases) if canvases else np.zeros((0, s, s, 3), np.uint8)

    def __len__(self):
        return len(self.images)

    def rows(self, idx):
        return self.images[idx]


class Sampler:
    """Host-side choice of the training images of each step, seeded by (seed, step).

    `source` holds the images: anything with `len`, `rows(idx)` -> uint8 [k, S, S, 3] and
    `sizes` (int32 [N, 2] valid sizes, or None), optionally `num_shards` (1) and `shard`; or,
    as before sources, the images themselves with `sizes` and `canvas_size` (an `ArrayRows`).
    A source of every image (`num_shards` 1): every process draws the same global batch and
    keeps the rows of its own devices, so a run on P processes sees the images a one-process
    run on as many devices sees. A sharded source (an `image_store.ImageStore` of P > 1
    processes: shard p holds images p, p + P, ...): each process draws its own rows from its
    shard with an rng seeded by (seed, step, shard), so the P-process global batch differs
    from the one-process one; with one process both draw exactly the same images. `draw` also
    returns the valid sizes of the chosen images (keep_aspect), which bound the step's crops.
    """

    def __init__(self, source, images_per_step: int, seed: int, sizes=None, canvas_size=0):
        if not hasattr(source, "rows"):
            source = ArrayRows(source, sizes, canvas_size)
        self.source, self.sizes = source, source.sizes
        self.local_devices = jax.local_device_count()
        self.per_device = images_per_step // jax.device_count()
        self.seed = seed

    def indices(self, step: int) -> np.ndarray:
        """Sorted positions in `source` of this process's images of `step`."""
        n = self.local_devices * self.per_device
        if getattr(self.source, "num_shards", 1) > 1:
            rng = np.random.default_rng([self.seed, step, self.source.shard])
            return np.sort(rng.integers(0, len(self.source), n))
        rng = np.random.default_rng([self.seed, step])
        idx = np.sort(rng.integers(0, len(self.source), jax.device_count() * self.per_device))
        return idx[jax.process_index() * n : (jax.process_index() + 1) * n]

    def draw(self, step: int):
        """(images uint8 [D, n, S, S, 3], valid sizes int32 [D, n, 2] or None) of `step`."""
        mine = self.indices(step)
        rows = self.source.rows(mine)
        b = rows.reshape(self.local_devices, self.per_device, *rows.shape[1:])
        if self.sizes is None:
            return b, None
        return b, self.sizes[mine].reshape(self.local_devices, self.per_device, 2)

    def batch(self, step: int) -> np.ndarray:
        return self.draw(step)[0]

    def step_args(self, step: int, bank, key) -> tuple:
        """The step's arguments after the state: images, bank, key[, sizes]."""
        b, sizes = self.draw(step)
        return (b, bank, key) if sizes is None else (b, bank, key, sizes)

    def call_args(self, steps, bank, keys) -> tuple:
        """The arguments after the state of one call of several `steps`
        (`train.make_multi_step`): each step's images stacked on axis 1, [D, k, n, S, S, 3],
        bank, keys [D, k][, sizes [D, k, n, 2]]."""
        drawn = [self.draw(step) for step in steps]
        b = np.stack([images for images, _ in drawn], 1)
        if self.sizes is None:
            return (b, bank, keys)
        return (b, bank, keys, np.stack([sizes for _, sizes in drawn], 1))


def make_sampler(config, workdir) -> Sampler:
    """The run's Sampler: over the decoded train split, or (`data.stream`) over this process's
    shard of the on-disk image store in `data.cache_dir` (default `<workdir>/image_store`),
    built there from the listed files when it is missing or stale."""
    t, d = config.train, config.data
    per_step = t.batch_size // t.crops_per_image
    if d.get("stream", False):
        cache_dir = d.get("cache_dir", "") or str(pathlib.Path(workdir) / "image_store")
        entries = datasets.list_train_entries(config)
        resize, n = d.get("resize", "square"), jax.process_count()
        source = image_store.open_or_build(
            entries, cache_dir, d.image_size, resize, jax.process_index(), n
        )
        return Sampler(source, per_step, t.seed)
    train_split = datasets.load_train(config)
    sizes = None if train_split.stacked else train_split.sizes
    return Sampler(train_split.images, per_step, t.seed, sizes, d.image_size)
