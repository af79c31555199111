"""Two-stage CMA-AE training (Alg. 1): pmap data parallelism, frozen memory, orbax resume.

Stage 1 (steps [0, S1)): random 64x64 crops of normal images, target = input, all parameters.
Stage 2 (steps [S1, S1+S2)): GAAGA images (on device), target = the clean image, the memory
frozen by an optax partition (zero update, no optimizer state for it). Stage 2 starts a fresh
Adam state for the parameters it trains (a new objective; Alg. 1 restarts the optimisation).

Every random choice is a function of (seed, step, device): a resumed run draws exactly what
the uninterrupted run drew, so it ends with the same parameters.
"""

import ctypes
import hashlib
import json
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
    images,
    losses,
    model,
    patches,
    train_log,
)

AXIS = "batch"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def stage_of(step: int, config) -> int:
    return 1 if step < config.train.stage1_steps else 2


def make_optimizer(config, params, stage: int) -> optax.GradientTransformation:
    """Adam on everything (stage 1) or on everything but the memory (stage 2)."""
    t = config.train
    adam = optax.adam(t.learning_rate, b1=t.b1, b2=t.b2)
    if stage == 1:
        return adam
    labels = {
        k: jax.tree.map(lambda _, k=k: "frozen" if k == "memory" else "train", v)
        for k, v in params.items()
    }
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def release_freed_host_memory():
    """Hands memory that compilation freed back to the OS (glibc `malloc_trim`), so that the
    step's buffers do not come on top of it in the peak; a no-op without glibc. Measured on
    CPU after compiling the training step: about 250 MB less resident memory."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def init_state(config, net) -> TrainState:
    variables = model.init(net, jax.random.key(config.train.seed))
    params = variables["params"]
    tx = make_optimizer(config, params, 1)
    state = TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params))
    release_freed_host_memory()
    return state


def to_stage2(config, state: TrainState) -> TrainState:
    tx = make_optimizer(config, state.params, 2)
    return state.replace(opt_state=tx.init(state.params))


def make_train_step(config, net, stage: int, tx):
    """Pmapped step: (state, images_u8 [D,n,S,S,3], bank [D,K,S,S,3], key) -> (state, metrics)."""
    t, a = config.train, config.anomaly
    net = net.clone(axis_name=AXIS)

    def step(state, images_u8, bank, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        k_anomaly, k_crop = jax.random.split(key)
        clean = images.to_float(images_u8)
        if stage == 2:
            inp, clean, _ = gaaga.synthesize(k_anomaly, clean, bank, a.patch_size, a.blur_sigma)
            target = clean if t.stage2_target == "clean" else inp
        else:
            inp = target = clean
        x_Bx64x64x3, y_Bx64x64x3 = patches.random_crops(k_crop, inp, t.crops_per_image, 64, target)

        def loss_fn(params):
            (rec, aux), upd = net.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x_Bx64x64x3,
                train=True,
                mutable=["batch_stats"],
            )
            loss, parts = losses.total(
                y_Bx64x64x3, rec, aux["entropy"], config.loss.w_rec, config.loss.w_sparse
            )
            return loss, (parts, upd["batch_stats"])

        (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        grads = jax.lax.pmean(grads, AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = jax.lax.pmean({"loss": loss, **parts}, AXIS)
        new = TrainState(state.step + 1, params, batch_stats, opt_state)
        return new, metrics

    return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


class Sampler:
    """Host-side choice of the training images of each step, seeded by (seed, step).

    Every process draws the same global batch and keeps the rows of its own devices, so a run
    on P processes sees the images a one-process run on as many devices sees.
    """

    def __init__(self, images_NxSxSx3, images_per_step: int, seed: int):
        self.images = images_NxSxSx3
        self.local_devices = jax.local_device_count()
        self.per_device = images_per_step // jax.device_count()
        self.seed = seed

    def batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        idx = np.sort(rng.integers(0, len(self.images), jax.device_count() * self.per_device))
        n = self.local_devices * self.per_device
        b = self.images[idx[jax.process_index() * n : (jax.process_index() + 1) * n]]
        return b.reshape(self.local_devices, self.per_device, *b.shape[1:])


def replicate(tree):
    """Copies `tree` onto every local device, in the layout the pmapped step returns.

    `flax.jax_utils.replicate` places arrays on an equal but differently keyed device mesh, so
    feeding its output and then the step's own output would compile the step twice.
    """
    return _same_layout(flax.jax_utils.replicate(tree))


_same_layout = jax.pmap(lambda x: x, axis_name=AXIS)


def unreplicate_to_host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), tree)


def config_digest(config) -> str:
    """Digest of the fields that shape the model; a resume with another model is refused."""
    m = config.model
    key = json.dumps([m.variant, m.memory_size, m.latent_dim])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def abstract_state(config, net, stage: int):
    def build():
        s = init_state(config, net)
        return to_stage2(config, s) if stage == 2 else s

    return jax.eval_shape(build)


def restore_state(config, net, mgr, step=None):
    """(step, host TrainState) from the newest readable checkpoint in `mgr`, or None."""

    def abstract_fn(meta):
        return abstract_state(config, net, int(meta["stage"]))

    found = checkpoint.restore(mgr, abstract_fn, step)
    if found is None:
        return None
    s, state, meta = found
    if meta.get("model_digest") not in (None, config_digest(config)):
        raise checkpoint.CheckpointError(
            f"checkpoint {s} in {mgr.directory} was written for another model "
            f"(variant/memory_size/latent_dim differ from this config)"
        )
    return s, state, meta


def natural_bank(config) -> np.ndarray:
    a = config.anomaly
    return gaaga.natural_bank(
        a.natural_source, config.data.image_size, a.bank_size, config.train.seed
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains both stages (resuming from `workdir`), then evaluates; returns the eval metrics."""
    train(config, workdir)
    from cmaae_jax import evaluate  # noqa: PLC0415 - evaluation pulls in plotting

    return evaluate.evaluate(config, workdir)


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Runs (or resumes) the two training stages; returns the final replicated-free state."""
    configlib.validate(config, jax.device_count())
    workdir = pathlib.Path(workdir)
    t = config.train
    total = t.stage1_steps + t.stage2_steps
    net = model.from_config(config)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    splits = datasets.load_splits(config)
    images_per_step = t.batch_size // t.crops_per_image
    sampler = Sampler(splits["train"].images, images_per_step, t.seed)
    mgr = checkpoint.manager(workdir, t.keep_checkpoints, cleanup_tmp=primary)
    found = restore_state(config, net, mgr)
    if found is None:
        start, state, meta = 0, init_state(config, net), {}
    else:
        start, state, meta = found
        logging.info("resuming from checkpoint %d (stage %d) in %s", start, meta["stage"], workdir)
    stage_in_state = int(meta.get("stage", 1))
    base_key = jax.random.fold_in(jax.random.key(t.seed), 1)
    log = train_log.TrainLog(workdir, primary, start, total, t.batch_size)
    bank = None
    for stage, (lo, hi) in ((1, (0, t.stage1_steps)), (2, (t.stage1_steps, total))):
        if start >= hi:
            continue
        if stage == 2 and stage_in_state == 1:
            state, stage_in_state = to_stage2(config, state), 2
        tx = make_optimizer(config, state.params, stage)
        step_fn = make_train_step(config, net, stage, tx)
        if stage == 2 and bank is None:
            bank = replicate(natural_bank(config))  # uint8: 4x less device memory than float
        bank_arg = bank if stage == 2 else replicate(jnp.zeros((1, 1, 1, 3)))
        rstate = replicate(state)
        if jax.process_count() > 1:
            # Every process compiles (the call below reuses it) before the first collective:
            # one that loads the step from the compilation cache (only process 0 writes it)
            # would otherwise wait for one still compiling in gloo's 30 s set-up, and fail.
            first = max(start, lo)
            key = replicate(jax.random.fold_in(base_key, first))
            step_fn.lower(rstate, sampler.batch(first), bank_arg, key).compile()
            ocp.multihost.sync_global_processes(f"cmaae_train_compiled_{stage}_{first}")
        for step in range(max(start, lo), hi):
            key = replicate(jax.random.fold_in(base_key, step))
            rstate, metrics = step_fn(rstate, sampler.batch(step), bank_arg, key)
            if step == max(start, lo):
                release_freed_host_memory()  # the step has been compiled
            done = step + 1
            if done % t.log_every == 0 or done == hi:
                values = {k: float(v[0]) for k, v in metrics.items()}
                if not np.isfinite(values["loss"]):
                    mgr.wait_until_finished()
                    raise FloatingPointError(
                        f"loss became {values['loss']} at step {done} (stage {stage}); training "
                        f"stopped, the last good checkpoint in {workdir / 'checkpoints'} is kept "
                        f"(lower train.learning_rate or check the data)"
                    )
                log.write(done, stage, values)
            if done % t.checkpoint_every == 0 or done == hi:
                host = unreplicate_to_host(rstate)
                meta = {"stage": stage, "seed": t.seed, "model_digest": config_digest(config)}
                checkpoint.save(mgr, done, host, meta)
        state = unreplicate_to_host(rstate)
    checkpoint.wait(mgr)
    log.close()
    return state
