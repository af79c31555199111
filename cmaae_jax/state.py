"""What a checkpoint holds: the training state, its per-stage optimizer, init and restore.

Training and inference both build on this module (inference restores a state without
importing the training loop). Stage 1 trains every parameter with Adam; stage 2 freezes the
memory through an optax partition (zero update, no optimizer state for it) and starts a fresh
Adam state for the rest (a new objective; Alg. 1 restarts the optimisation).
"""

import copy
import gc
import hashlib
import json

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging

from cmaae_jax import checkpoint, devices, errors, model
from cmaae_jax import workdir as workdir_lib

# The config fields the trained parameters depend on, with the value a config that lacks the
# field means. A run evaluated, resumed or exported with other values would be another model.
TRAINED_FIELDS = {
    "model.variant": None,
    "model.memory_size": None,
    "model.latent_dim": None,
    "model.similarity": "cosine",
    "model.shrink_threshold": -1.0,
    "model.temperature": 1.0,
    "model.gate": "softmax",
    "model.segment_head": False,
    "data.image_size": None,
    "data.resize": "square",
    "train.ema_decay": 0.0,
}
# Fields added to TRAINED_FIELDS after checkpoints existed: at their default they stay out of
# the digest, so that those checkpoints (whose digest never saw them) still restore.
ADDED_LATER = ("model.segment_head", "train.ema_decay")
# Fields a trained run may be evaluated with other values of (recorded in eval/metrics.json).
SCORE_SECTION = "score"


class ConfigMismatchError(errors.UserError, ValueError):
    """A config that differs from the run's own in a field the parameters depend on."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    ema: dict | None = None  # train.ema_decay > 0: the stage's moving average of `params`


def ema_decay(config) -> float:
    """config train.ema_decay: 0 (the paper) keeps no average; else the decay d of
    ema <- d * ema + (1 - d) * params after every step, restarted at each stage's start."""
    return float(config.train.get("ema_decay", 0.0))


def fresh_ema(config, params):
    """The moving average at a stage's start: a copy of `params`, or None when none is kept."""
    return jax.tree.map(jnp.copy, params) if ema_decay(config) > 0 else None


def update_ema(config, ema, params):
    """The moving average after a step (None when the run keeps none)."""
    if ema is None:
        return None
    d = ema_decay(config)
    return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)


WEIGHTS = ("average", "last")  # config score.weights


def eval_params(state: TrainState, weights: str = "average") -> dict:
    """The parameters a trained run is scored with (config score.weights): `average`, the
    moving average when the run kept one (else the last step's), or `last`, the last step's."""
    if weights not in WEIGHTS:
        raise ValueError(f"score.weights must be one of {WEIGHTS}, got {weights!r}")
    return state.params if state.ema is None or weights == "last" else state.ema


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


LR_SCHEDULES = ("constant", "cosine")  # config train.lr_schedule
# config train.remat: what the backward pass keeps of the forward pass (train.REMAT_POLICIES).
REMAT_OPTIONS = ("none", "conv_outputs")


def lr_factor(config, stage: int, step):
    """Multiplier of `train.learning_rate` at global step `step` (int, may be traced) of
    `stage`: 1 for `constant` (the paper); for `cosine`, within each stage a linear warm-up
    over `train.warmup_fraction` of its steps, then a half cosine down to (nearly) zero at
    the stage's last step. It scales Adam's update, which is the same as scaling its step
    size; the optimizer state is unchanged, so checkpoints and resumes do not depend on it.
    """
    t = config.train
    if t.get("lr_schedule", "constant") == "constant":
        return 1.0
    start, length = (0, t.stage1_steps) if stage == 1 else (t.stage1_steps, t.stage2_steps)
    warmup = max(1, round(t.get("warmup_fraction", 0.05) * length))
    s = jnp.asarray(step, jnp.float32) - start
    ramp = (s + 1) / warmup
    progress = jnp.clip((s + 1 - warmup) / max(1, length + 1 - warmup), 0.0, 1.0)
    return jnp.where(s < warmup, ramp, 0.5 * (1 + jnp.cos(jnp.pi * progress)))


def release_compiled_programs():
    """Frees the programs JAX keeps compiled in its caches (a finished stage's training step:
    about 165 MB of host memory at the benchmark's step on CPU, measured) and hands the
    memory back to the OS; whatever runs later compiles again."""
    jax.clear_caches()
    gc.collect()
    devices.release_freed_host_memory()


def init_state(config, net) -> TrainState:
    variables = model.init(net, jax.random.key(config.train.seed))
    params = variables["params"]
    tx = make_optimizer(config, params, 1)
    state = TrainState(
        jnp.zeros((), jnp.int32),
        params,
        variables["batch_stats"],
        tx.init(params),
        fresh_ema(config, params),
    )
    devices.release_freed_host_memory()
    return state


def to_stage2(config, state: TrainState) -> TrainState:
    """A fresh Adam state for stage 2, and the moving average restarted from the parameters
    stage 2 starts from (stage 1's average is not what stage 2 trains)."""
    tx = make_optimizer(config, state.params, 2)
    return state.replace(opt_state=tx.init(state.params), ema=fresh_ema(config, state.params))


def field(config, name: str):
    """The value of `section.field` in `config`, or its TRAINED_FIELDS default when absent."""
    section, key = name.split(".")
    return config[section].get(key, TRAINED_FIELDS.get(name))


def config_digest(config, every_field: bool = False) -> str:
    """Digest of the fields the parameters depend on (TRAINED_FIELDS; those ADDED_LATER only
    where not at their default, unless `every_field`)."""
    key = json.dumps(
        [
            [name, field(config, name)]
            for name in TRAINED_FIELDS
            if every_field or name not in ADDED_LATER or field(config, name) != TRAINED_FIELDS[name]
        ]
    )
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _legacy_digest(config) -> str:
    """The digest of checkpoints written before TRAINED_FIELDS (variant, memory, latent)."""
    m = config.model
    key = json.dumps([m.variant, m.memory_size, m.latent_dim])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _digest_matches(meta: dict, config) -> bool:
    if "trained_digest" in meta:  # every_field: the digest the first segment-head commit wrote
        return meta["trained_digest"] in (config_digest(config), config_digest(config, True))
    return meta.get("model_digest") in (None, _legacy_digest(config))


def checkpoint_meta(config, stage: int) -> dict:
    """The JSON saved with every checkpoint."""
    return {"stage": stage, "seed": config.train.seed, "trained_digest": config_digest(config)}


def check_same_model(config, trained, where) -> None:
    """Raises ConfigMismatchError naming the first TRAINED_FIELDS field that differs."""
    for name in TRAINED_FIELDS:
        mine, theirs = field(config, name), field(trained, name)
        if mine != theirs:
            raise ConfigMismatchError(
                f"config field {name}={mine!r} would be another model: the run in {where} "
                f"was trained with {name}={theirs!r} (leave --config out to use the run's "
                f"own {workdir_lib.CONFIG})"
            )


def bind_config(config, workdir):
    """The config to evaluate a trained run with, and the score fields changed for it.

    The run's own `config.json` gives the model and every training field; `config` (the
    command line's, or None) may change where the data is (data.root/format/category and
    the TFDS fields), the evaluation fields (eval.*) and the score fields (score.*: a
    legitimate evaluation choice, returned as {field: (trained, used)} to be recorded). A
    field the parameters depend on (TRAINED_FIELDS) that differs is refused.
    """
    if config is None:  # the run's own: a workdir without config.json is refused here
        return workdir_lib.load_config(workdir), {}
    if not workdir_lib.config_path(workdir).is_file():  # no training run; restoring says so
        return config, {}
    trained = workdir_lib.load_config(workdir)
    check_same_model(config, trained, workdir)
    bound = copy.deepcopy(trained)
    overrides = {}
    with bound.unlocked():
        for key in ("root", "format", "category", "use_tfds", "tfds_data_dir"):
            if key in config.data:
                if _plain(config.data[key]) != _plain(trained.data.get(key)):
                    logging.warning(
                        "evaluating on data.%s=%r: the run trained on %r (the --config's "
                        "data fields replace the run's)", key, config.data[key],
                        trained.data.get(key),
                    )  # fmt: skip
                bound.data[key] = config.data[key]
        bound.eval = copy.deepcopy(config.eval)
        for key, value in config[SCORE_SECTION].items():
            old = trained[SCORE_SECTION].get(key)
            if _plain(old) != _plain(value):
                overrides[f"{SCORE_SECTION}.{key}"] = [_plain(old), _plain(value)]
                logging.info(
                    "scoring with %s.%s=%r (trained run: %r)", SCORE_SECTION, key, value, old
                )
            bound[SCORE_SECTION][key] = value
    return bound, overrides


def _plain(value):
    """JSON-comparable value (tuples and lists alike)."""
    return json.loads(json.dumps(value)) if value is not None else None


def abstract_state(config, net, stage: int):
    def build():
        s = init_state(config, net)
        return to_stage2(config, s) if stage == 2 else s

    return jax.eval_shape(build)


def restore_state(config, net, mgr, step=None):
    """(step, host TrainState, meta) from the newest readable checkpoint in `mgr`, or None."""

    def abstract_fn(meta):
        return abstract_state(config, net, int(meta["stage"]))

    found = checkpoint.restore(mgr, abstract_fn, step)
    if found is None:
        return None
    s, restored, meta = found
    if not _digest_matches(meta, config):
        raise checkpoint.CheckpointError(
            f"checkpoint {s} in {mgr.directory} was written for another model (one of "
            f"{', '.join(TRAINED_FIELDS)} differs from this config)"
        )
    return s, restored, meta
