"""Two-stage CMA-AE training (Alg. 1): pmap data parallelism, frozen memory, orbax resume.

Stage 1 (steps [0, S1)): random 64x64 crops of normal images, target = input, all parameters.
Stage 2 (steps [S1, S1+S2)): GAAGA images (on device), target = the clean image, the memory
frozen by an optax partition (zero update, no optimizer state for it). Stage 2 starts a fresh
Adam state for the parameters it trains (a new objective; Alg. 1 restarts the optimisation).
With `model.segment_head`, stage 2 also trains the discriminative head (segmenter.py) on the
paste masks, from the reconstructions without gradient: the auto-encoder's updates are those
of a run without the head. `anomaly.focus_crops` places that share of each image's stage-2
crops on its pastes (the rest uniform, as in the paper): at 512 px a uniform crop holds a
pasted pixel about one time in six.

Every random choice is a function of (seed, step, device): a resumed run draws exactly what
the uninterrupted run drew, so it ends with the same parameters.
"""

import functools
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from cmaae_jax import (
    checkpoint,
    configlib,
    datasets,
    gaaga,
    image_store,
    images,
    losses,
    model,
    natural_images,
    patches,
    train_log,
)
from cmaae_jax import state as state_lib
from cmaae_jax import workdir as workdir_lib

AXIS = "batch"


# config train.remat (state.REMAT_OPTIONS): what the backward pass keeps of the forward pass;
# the rest is recomputed from the kept values.
REMAT_POLICIES = {
    "none": None,
    "conv_outputs": jax.checkpoint_policies.dots_saveable,  # convs and matmuls kept
}


def make_train_step(config, net, stage: int, tx):
    """Pmapped step: (state, images_u8 [D,n,S,S,3], bank [D,K,S,S,3], key[, sizes [D,n,2]])
    -> (state, metrics). `sizes` (keep_aspect canvases) bounds the crops to each image's valid
    region; without it the step is the square-mode one."""
    return jax.pmap(device_step(config, net, stage, tx), axis_name=AXIS, donate_argnums=(0,))


def device_step(config, net, stage: int, tx):
    """The step of one device (arguments without the leading device axis), its collectives
    over the axis `AXIS`: what `make_train_step` pmaps."""
    t, a = config.train, config.anomaly
    net = net.clone(axis_name=AXIS)

    def step(state, images_u8, bank, key, sizes_nx2=None):
        key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        k_anomaly, k_crop = jax.random.split(key)
        clean = images.to_float(images_u8)
        if stage == 2:
            shape = a.get("paste_shape", "blob")
            inp, clean, mask = gaaga.synthesize(
                k_anomaly,
                clean,
                bank,
                a.patch_size,
                a.blur_sigma,
                shape,
                sizes_nx2,
                a.get("thinnest_px", 0.0),
            )
            target = clean if t.stage2_target == "clean" else inp
        else:
            inp = target = clean
        train_head = stage == 2 and net.segment_head
        aligned = (target, mask) if train_head else (target,)  # the mask only for the head
        focus = (mask, focus_count(config)) if stage == 2 else None
        x_Bx64x64x3, y_Bx64x64x3, *m_Bx64x64 = patches.random_crops(
            k_crop, inp, t.crops_per_image, 64, *aligned, limits_Nx2=sizes_nx2, focus=focus
        )

        def loss_fn(params, net):
            apply = functools.partial(net.apply, train=True, mutable=["batch_stats"])
            if t.get("remat", "none") != "none":
                apply = jax.checkpoint(apply, policy=REMAT_POLICIES[t.remat])
            (rec, aux), upd = apply(
                {"params": params, "batch_stats": state.batch_stats}, x_Bx64x64x3
            )
            loss, parts = losses.total(
                y_Bx64x64x3, rec, aux["entropy"], config.loss.w_rec, config.loss.w_sparse
            )
            parts = {**parts, **model.code_statistics(aux)}
            if train_head:  # the head sees the repair without sending gradient into it
                logits = net.apply(
                    {"params": params}, x_Bx64x64x3, jax.lax.stop_gradient(rec), method="segment"
                )
                seg = losses.segmentation_bce(logits, m_Bx64x64[0])
                loss = loss + config.loss.get("w_seg", 1.0) * seg
                parts = {**parts, "seg_bce": seg}
            return loss, (parts, upd["batch_stats"])

        def value_and_grad(net, params):
            return jax.value_and_grad(loss_fn, has_aux=True)(params, net)

        (loss, (parts, batch_stats)), grads = model.per_platform(net, value_and_grad, state.params)
        grads = jax.lax.pmean(grads, AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        factor = state_lib.lr_factor(config, stage, state.step)
        updates = jax.tree.map(lambda u: u * factor, updates)
        params = optax.apply_updates(state.params, updates)
        metrics = jax.lax.pmean({"loss": loss, **parts}, AXIS)
        new = state_lib.TrainState(state.step + 1, params, batch_stats, opt_state)
        return new, metrics

    return step


def focus_count(config) -> int:
    """How many of each image's stage-2 crops are placed on its pastes (`anomaly.focus_crops`
    of `train.crops_per_image`, rounded); the rest are uniform, as in the paper."""
    share = config.anomaly.get("focus_crops", 0.0)
    return int(round(share * config.train.crops_per_image))


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


def replicate(tree):
    """Copies `tree` onto every local device, in the layout the pmapped step returns.

    `flax.jax_utils.replicate` places arrays on an equal but differently keyed device mesh, so
    feeding its output and then the step's own output would compile the step twice.
    """
    return _same_layout(flax.jax_utils.replicate(tree))


_same_layout = jax.pmap(lambda x: x, axis_name=AXIS)


def first_replica(x) -> np.ndarray:
    """The copy on this process's first device, read without dispatching an op: `x[0]` would
    compile a gather for every distinct shape (seconds per checkpoint on a small model)."""
    return np.asarray(x.addressable_data(0))[0]


def unreplicate_to_host(tree):
    return jax.tree.map(first_replica, tree)


def _start(config, workdir: pathlib.Path, net, mgr):
    """(first step, host state, stage the state is in) from the newest checkpoint or init."""
    found = state_lib.restore_state(config, net, mgr)
    if found is None:
        return 0, state_lib.init_state(config, net), 1
    start, state, meta = found
    logging.info("resuming from checkpoint %d (stage %d) in %s", start, meta["stage"], workdir)
    return start, state, int(meta["stage"])


def compile_step(step_fn, rstate, args: tuple, tag: str = ""):
    """The step compiled ahead of its first call, on every process, with what compiling freed
    handed back to the OS before the step allocates its own buffers: compiled by its first
    call instead, both came on top of each other in the peak host memory (BENCHMARKS.md).
    With several processes they all compile and wait here (`tag` names the barrier): one
    that loads the step from the compilation cache would otherwise reach the first collective
    while another still compiles, and gloo's 30 s set-up would fail. Their step stays the
    pmapped function (its ahead-of-time executable expects global shapes, the calls give
    this process's), whose first call then finds the compiled step in the cache."""
    compiled = step_fn.lower(rstate, *args).compile()
    state_lib.release_freed_host_memory()
    if jax.process_count() == 1:
        return compiled
    ocp.multihost.sync_global_processes(f"cmaae_train_compiled_{tag}")
    return step_fn


def _check_finite(values: dict, done: int, stage: int, workdir, mgr):
    if not np.isfinite(values["loss"]):
        mgr.wait_until_finished()
        raise FloatingPointError(
            f"loss became {values['loss']} at step {done} (stage {stage}); training "
            f"stopped, the last good checkpoint in {workdir_lib.checkpoints_dir(workdir)} is "
            f"kept (lower train.learning_rate or check the data)"
        )


class _Run:
    """What the stages of one training run share: config, model, data, checkpoints, log."""

    def __init__(self, config, workdir: pathlib.Path, net, sampler, mgr, log, state):
        self.config, self.workdir, self.net = config, workdir, net
        self.sampler, self.mgr, self.log = sampler, mgr, log
        self.state = state  # the host TrainState between stages (None while a stage runs)
        self.base_key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
        self.bank = None

    def bank_arg(self, stage: int):
        if stage == 1:
            return replicate(jnp.zeros((1, 1, 1, 3)))
        if self.bank is None:  # uint8: 4x less device memory than float
            self.bank = replicate(natural_images.bank_for_config(self.config))
        return self.bank

    def stage(self, stage: int, first: int, hi: int):
        """Runs steps [first, hi) of `stage` from the host state `self.state` and leaves the
        final one there. The host copy is dropped while the replicas train (one copy of the
        parameters and Adam's moments less in the peak host memory)."""
        t = self.config.train
        tx = state_lib.make_optimizer(self.config, self.state.params, stage)
        step_fn = make_train_step(self.config, self.net, stage, tx)
        bank_arg = self.bank_arg(stage)
        rstate, self.state = replicate(self.state), None
        key = replicate(jax.random.fold_in(self.base_key, first))
        args = self.sampler.step_args(first, bank_arg, key)  # compiled with, then run
        step_fn = compile_step(step_fn, rstate, args, f"{stage}_{first}")
        for step in range(first, hi):
            if step > first:
                key = replicate(jax.random.fold_in(self.base_key, step))
                args = self.sampler.step_args(step, bank_arg, key)
            rstate, metrics = step_fn(rstate, *args)
            done = step + 1
            if done % t.log_every == 0 or done == hi:
                values = {k: float(first_replica(v)) for k, v in metrics.items()}
                _check_finite(values, done, stage, self.workdir, self.mgr)
                self.log.write(done, stage, values)
            if done % t.checkpoint_every == 0 or done == hi:
                meta = state_lib.checkpoint_meta(self.config, stage)
                checkpoint.save(self.mgr, done, unreplicate_to_host(rstate), meta)
        self.state = unreplicate_to_host(rstate)


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
    """Runs (or resumes) the two training stages; returns the final host state."""
    configlib.validate(config, jax.device_count())
    workdir = pathlib.Path(workdir)
    t = config.train
    total = t.stage1_steps + t.stage2_steps
    net = model.from_config(config)
    primary = jax.process_index() == 0
    if workdir_lib.config_path(workdir).is_file():  # a resume: the same model, or a refusal
        state_lib.check_same_model(config, workdir_lib.load_config(workdir), workdir)
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir_lib.save_config(workdir, config)
    sampler = make_sampler(config, workdir)
    mgr = checkpoint.manager(workdir, t.keep_checkpoints, cleanup_tmp=primary)
    start, state, stage_in_state = _start(config, workdir, net, mgr)
    log = train_log.TrainLog(workdir, primary, start, total, t.batch_size)
    run = _Run(config, workdir, net, sampler, mgr, log, state)
    del state  # the run owns it, and drops it while the replicas train
    for stage, (lo, hi) in ((1, (0, t.stage1_steps)), (2, (t.stage1_steps, total))):
        if start >= hi:
            continue
        if stage == 2 and stage_in_state == 1:
            run.state, stage_in_state = state_lib.to_stage2(config, run.state), 2
        run.stage(stage, max(start, lo), hi)
    checkpoint.wait(mgr)
    log.close()
    return run.state
