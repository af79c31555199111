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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cmaae_jax import (
    checkpoint,
    configlib,
    datasets,
    devices,
    gaaga,
    images,
    losses,
    model,
    natural_images,
    pyramid,
    replicas,
    sharded_state,
    train_log,
)
from cmaae_jax import sampler as sampler_lib
from cmaae_jax import state as state_lib
from cmaae_jax import workdir as workdir_lib

# config train.remat (state.REMAT_OPTIONS): what the backward pass keeps of the forward pass;
# the rest is recomputed from the kept values.
REMAT_POLICIES = {
    "none": None,
    "conv_outputs": jax.checkpoint_policies.dots_saveable,  # convs and matmuls kept
}


def make_train_step(config, net, stage: int, tx):
    """Pmapped step: (state, images_u8 [D,n,S,S,3], bank [D,K,S,S,3], key[, sizes [D,n,2]])
    -> (state, metrics), the state as `sharded_state.place` puts it on the devices. `sizes`
    (keep_aspect canvases) bounds the crops to each image's valid region; without it the step
    is the square-mode one."""
    step = device_step(config, model.for_local_devices(net), stage, tx)
    return jax.pmap(step, axis_name=replicas.AXIS, donate_argnums=(0,))


def make_multi_step(config, net, stage: int, tx, steps: int):
    """Pmapped loop of `steps` steps in one device call: (state, images_u8 [D,k,n,S,S,3],
    bank, keys [D,k][, sizes [D,k,n,2]]) -> (state, the last step's metrics), the same steps
    as `steps` calls of `make_train_step`'s. The call's temporary buffers serve all of its
    steps: on CPU, fewer fresh pages per step (BENCHMARKS.md, fortieth session)."""
    step = device_step(config, model.for_local_devices(net), stage, tx)

    def loop(state, images_u8, bank, keys, sizes_nx2=None):
        per_step = (images_u8, keys) if sizes_nx2 is None else (images_u8, keys, sizes_nx2)
        body = lambda s, xs: step(s, xs[0], bank, *xs[1:])
        state, metrics = jax.lax.scan(body, state, per_step)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    return jax.pmap(loop, axis_name=replicas.AXIS, donate_argnums=(0,))


def call_length(step: int, hi: int, config) -> int:
    """Steps the call from `step` runs: `train.steps_per_call` where they all come before
    the next log line, checkpoint or the stage's end `hi`; else 1."""
    t = config.train
    every = (t.log_every, t.checkpoint_every)
    boundary = min(hi, *(step // e * e + e for e in every))
    per_call = t.get("steps_per_call", 1)
    return per_call if step + per_call <= boundary else 1


def stage_inputs(config, stage: int, key, clean, bank, sizes_nx2=None):
    """(input, target, paste mask or None) images of one device's batch: stage 1 the clean
    images; stage 2 GAAGA's pastes on them, with the clean images (or the pasted ones,
    `train.stage2_target=input`) as the target."""
    if stage != 2:
        return clean, clean, None
    a = config.anomaly
    inp, clean, mask = gaaga.synthesize(
        key,
        clean,
        bank,
        a.patch_size,
        a.blur_sigma,
        a.get("paste_shape", "blob"),
        sizes_nx2,
        a.get("thinnest_px", 0.0),
        a.get("min_opacity", 1.0),
    )
    return inp, clean if config.train.stage2_target == "clean" else inp, mask


def make_loss_fn(config, batch_stats, x_Bx64x64x3, y_Bx64x64x3, mask_Bx64x64=None):
    """loss_fn(params, net) -> (loss, (metric parts, new batch_stats)) of one batch of crops:
    eq. 11's terms, `loss.w_feat`'s feature residual and, given the crops' paste mask, the
    segment head's cross-entropy (the head sees the repair without sending gradient into it)."""
    t, w = config.train, config.loss

    def loss_fn(params, net):
        apply = functools.partial(net.apply, train=True, mutable=["batch_stats"])
        if t.get("remat", "none") != "none":
            apply = jax.checkpoint(apply, policy=REMAT_POLICIES[t.remat])
        (rec, aux), upd = apply({"params": params, "batch_stats": batch_stats}, x_Bx64x64x3)
        loss, parts = losses.total(y_Bx64x64x3, rec, aux["entropy"], w.w_rec, w.w_sparse)
        parts = {**parts, **model.code_statistics(aux)}
        if w.get("w_feat", 0.0) > 0:
            feat = losses.feature_residual(net, params, y_Bx64x64x3, rec)
            loss = loss + w.w_feat * feat
            parts = {**parts, "feat": feat}
        if mask_Bx64x64 is not None:
            logits = net.apply(
                {"params": params}, x_Bx64x64x3, jax.lax.stop_gradient(rec), method="segment"
            )
            seg = losses.segmentation_bce(logits, mask_Bx64x64)
            loss = loss + w.get("w_seg", 1.0) * seg
            parts = {**parts, "seg_bce": seg}
        return loss, (parts, upd["batch_stats"])

    return loss_fn


def device_step(config, net, stage: int, tx):
    """The step of one device (arguments without the leading device axis), its collectives
    over the axis `replicas.AXIS`: what `make_train_step` pmaps."""
    t = config.train
    net = net.clone(axis_name=replicas.AXIS)
    average = functools.partial(state_lib.update_ema, config)

    def step(state, images_u8, bank, key, sizes_nx2=None):
        key = jax.random.fold_in(key, jax.lax.axis_index(replicas.AXIS))
        k_anomaly, k_crop = jax.random.split(key)
        inp, target, mask = stage_inputs(
            config, stage, k_anomaly, images.to_float(images_u8), bank, sizes_nx2
        )
        train_head = stage == 2 and net.segment_head
        aligned = (target, mask) if train_head else (target,)  # the mask only for the head
        focus = (mask, focus_count(config)) if stage == 2 else None
        x_Bx64x64x3, y_Bx64x64x3, *m_Bx64x64 = pyramid.scaled_crops(
            k_crop,
            inp,
            t.crops_per_image,
            *aligned,
            scales=tuple(t.get("crop_scales", (1,))),
            limits_Nx2=sizes_nx2,
            focus=focus,
            placement=t.get("crop_placement", "uniform"),
        )
        loss_fn = make_loss_fn(config, state.batch_stats, x_Bx64x64x3, y_Bx64x64x3, *m_Bx64x64)

        def value_and_grad(net, params):
            return jax.value_and_grad(loss_fn, has_aux=True)(params, net)

        (loss, (parts, batch_stats)), grads = model.per_platform(net, value_and_grad, state.params)
        factor = state_lib.lr_factor(config, stage, state.step)
        params, opt_state, ema = sharded_state.update(
            tx, grads, state.opt_state, state.params, factor, state.ema, average
        )
        metrics = jax.lax.pmean({"loss": loss, **parts}, replicas.AXIS)
        new = state_lib.TrainState(state.step + 1, params, batch_stats, opt_state, ema)
        return new, metrics

    return step


def focus_count(config) -> int:
    """How many of each image's stage-2 crops are placed on its pastes (`anomaly.focus_crops`
    of `train.crops_per_image`, rounded); the rest are uniform, as in the paper."""
    share = config.anomaly.get("focus_crops", 0.0)
    return int(round(share * config.train.crops_per_image))


def _start(config, workdir: pathlib.Path, net, mgr):
    """(first step, host state, stage the state is in) from the newest checkpoint or init."""
    found = state_lib.restore_state(config, net, mgr)
    if found is None:
        return 0, state_lib.init_state(config, net), 1
    start, state, meta = found
    logging.info("resuming from checkpoint %d (stage %d) in %s", start, meta["stage"], workdir)
    return start, state, int(meta["stage"])


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
        self.rstate = None  # the replicated state while a stage runs
        self.base_key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
        self.bank = None

    def bank_arg(self, stage: int):
        if stage == 1:
            return replicas.replicate(jnp.zeros((1, 1, 1, 3)))
        if self.bank is None:  # uint8: 4x less device memory than float
            self.bank = replicas.replicate(natural_images.bank_for_config(self.config))
        return self.bank

    def call(self, stage: int, step: int, n: int, bank_arg, tx, fns: dict):
        """(the function, its arguments) of the call running steps [step, step + n): `fns`
        holds the stage's functions by steps per call, each compiled at its first call."""
        keys = [jax.random.fold_in(self.base_key, s) for s in range(step, step + n)]
        if n == 1:
            args = self.sampler.step_args(step, bank_arg, replicas.replicate(keys[0]))
        else:
            keys = replicas.replicate(jnp.stack(keys))
            args = self.sampler.call_args(range(step, step + n), bank_arg, keys)
        if n not in fns:
            make = functools.partial(make_multi_step, steps=n) if n > 1 else make_train_step
            fn = make(self.config, self.net, stage, tx)
            tag = f"{stage}_{step}"
            scheduler = self.config.train.get("cpu_scheduler", "default")
            if self.state is not None:  # the stage's first call: the replicas made here
                fn, self.rstate = replicas.compiled_with_replicas(
                    fn, self.state, args, tag, scheduler, sharded_state.place, sharded_state.shapes
                )
                self.state = None
                devices.release_freed_host_memory()  # the host copy's pages, before the peak
            else:
                fn = replicas.compile_step(fn, self.rstate, args, tag, scheduler)
            fns[n] = fn
        return fns[n], args

    def stage(self, stage: int, first: int, hi: int):
        """Runs steps [first, hi) of `stage` from the host state `self.state` and leaves the
        final one there. The host copy is dropped while the replicas train (one copy of the
        parameters and Adam's moments less in the peak host memory)."""
        if first >= hi:
            return
        t = self.config.train
        tx = state_lib.make_optimizer(self.config, self.state.params, stage)
        bank_arg, fns, step = self.bank_arg(stage), {}, first
        while step < hi:
            n = call_length(step, hi, self.config)
            fn, args = self.call(stage, step, n, bank_arg, tx, fns)
            self.rstate, metrics = fn(self.rstate, *args)
            done = step = step + n
            if done % t.log_every == 0 or done == hi:
                values = {k: float(replicas.first_replica(v)) for k, v in metrics.items()}
                _check_finite(values, done, stage, self.workdir, self.mgr)
                self.log.write(done, stage, values)
            if done % t.checkpoint_every == 0 or done == hi:
                meta = state_lib.checkpoint_meta(self.config, stage)
                saved = sharded_state.to_host(self.rstate, tx)
                checkpoint.save(self.mgr, done, saved, meta)
        self.state = saved  # the stage's last step is always saved: its host copy
        self.rstate = None
        del fns
        state_lib.release_compiled_programs()  # the next stage and evaluation need room


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
    """Runs (or resumes) the two training stages; returns the final host state."""
    configlib.validate(config, jax.device_count())
    datasets.check_eval_files(config)  # a broken test file fails now, not after training
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
    sampler = sampler_lib.make_sampler(config, workdir)
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
