"""Config validation: impossible values are rejected before anything is compiled.

Each option list is imported from the module that owns the option; this module only checks.
"""

from cmaae_jax import (
    calibration,
    datasets,
    devices,
    errors,
    gaaga,
    image_score,
    images,
    losses,
    map_levels,
    memory,
    model,
    natural_images,
    patches,
    pyramid,
    reference,
    score_options,
)
from cmaae_jax import state as state_lib


class ConfigError(errors.UserError, ValueError):
    """A config field has an impossible value; the message names the field."""


def _check(ok, field, value, why):
    if not ok:
        raise ConfigError(f"config field {field}={value!r}: {why}")


def _one_of(value, options, field):
    _check(value in options, field, value, f"must be one of {options}")


def _at_least(value, low, field):
    _check(value >= low, field, value, f"must be >= {low}")


def _validate_data(d):
    _one_of(d.format, datasets.FORMATS, "data.format")
    _check(
        isinstance(d.image_size, int) and d.image_size >= 64 and d.image_size % 64 == 0,
        "data.image_size",
        d.image_size,
        "must be a positive multiple of 64 (the patch size)",
    )
    _one_of(d.get("resize", "square"), images.RESIZE_MODES, "data.resize")
    stream = d.get("stream", False)
    _check(isinstance(stream, bool), "data.stream", stream, "must be True or False")
    _check(
        not (stream and d.get("use_tfds", False)),
        "data.stream",
        stream,
        "reads image files, not TFDS: set data.use_tfds=False (or data.stream=False)",
    )
    cache_dir = d.get("cache_dir", "")
    _check(isinstance(cache_dir, str), "data.cache_dir", cache_dir, "must be a folder path")


def _validate_model(m, loss):
    _one_of(m.variant, model.VARIANTS, "model.variant")
    _at_least(m.memory_size, 1, "model.memory_size")
    _at_least(m.latent_dim, 1, "model.latent_dim")
    _one_of(m.similarity, memory.SIMILARITIES, "model.similarity")
    _one_of(m.gate, memory.GATES, "model.gate")
    temperature = m.get("temperature", 1.0)
    _check(temperature > 0, "model.temperature", temperature, "must be > 0")
    _check(m.shrink_threshold < 1, "model.shrink_threshold", m.shrink_threshold, "must be < 1")
    _one_of(m.dtype, model.DTYPES, "model.dtype")
    _one_of(m.conv_impl, model.CONV_IMPLS, "model.conv_impl")
    _at_least(loss.w_rec, 0, "loss.w_rec")
    _at_least(loss.w_sparse, 0, "loss.w_sparse")
    _at_least(loss.get("w_feat", 0.0), 0, "loss.w_feat")
    _at_least(loss.get("w_seg", 1.0), 0, "loss.w_seg")
    _one_of(m.get("segment_head", False), (False, True), "model.segment_head")


def _validate_train(t, num_devices):
    _at_least(t.stage1_steps, 0, "train.stage1_steps")
    _at_least(t.stage2_steps, 0, "train.stage2_steps")
    _at_least(t.batch_size, 1, "train.batch_size")
    _at_least(t.crops_per_image, 1, "train.crops_per_image")
    _check(
        t.batch_size % t.crops_per_image == 0,
        "train.batch_size",
        t.batch_size,
        f"must be a multiple of train.crops_per_image={t.crops_per_image}",
    )
    if num_devices is not None:
        images = t.batch_size // t.crops_per_image
        _check(
            images % num_devices == 0,
            "train.batch_size",
            t.batch_size,
            f"gives {images} images per step (batch_size / crops_per_image), which does not "
            f"divide over {num_devices} devices (on a CPU, launch/train.py --cpu_devices=N "
            f"sets their number; 0 for one)",
        )
    _one_of(t.get("crop_placement", "uniform"), patches.CROP_PLACEMENTS, "train.crop_placement")
    scales = tuple(t.get("crop_scales", (1,)))
    _check(pyramid.is_pyramid(scales), "train.crop_scales", scales, f"must be {pyramid.HELP}")
    _check(
        t.batch_size // t.crops_per_image // (num_devices or 1) >= len(scales),
        "train.crop_scales",
        scales,
        "needs at least one image per scale on each device (batch_size / crops_per_image)",
    )
    _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "must be > 0")
    _check(0 <= t.b1 < 1 and 0 <= t.b2 < 1, "train.b1/b2", (t.b1, t.b2), "must be in [0, 1)")
    _one_of(t.stage2_target, losses.STAGE2_TARGETS, "train.stage2_target")
    _one_of(t.get("lr_schedule", "constant"), state_lib.LR_SCHEDULES, "train.lr_schedule")
    _one_of(t.get("remat", "none"), state_lib.REMAT_OPTIONS, "train.remat")
    _one_of(t.get("cpu_scheduler", "default"), tuple(devices.CPU_SCHEDULERS), "train.cpu_scheduler")
    ema = t.get("ema_decay", 0.0)
    _check(0 <= ema < 1, "train.ema_decay", ema, "must be in [0, 1) (0: no moving average)")
    warmup = t.get("warmup_fraction", 0.05)
    _check(0 <= warmup < 1, "train.warmup_fraction", warmup, "must be in [0, 1)")
    _at_least(t.checkpoint_every, 1, "train.checkpoint_every")
    _at_least(t.keep_checkpoints, 1, "train.keep_checkpoints")
    _at_least(t.log_every, 1, "train.log_every")
    per_call = t.get("steps_per_call", 1)
    _check(
        isinstance(per_call, int) and per_call >= 1,
        "train.steps_per_call",
        per_call,
        "must be an integer >= 1",
    )


def _validate_anomaly(a, image_size):
    _check(
        0 < a.patch_size <= image_size,
        "anomaly.patch_size",
        a.patch_size,
        f"must be in (0, data.image_size={image_size}]",
    )
    _at_least(a.bank_size, 1, "anomaly.bank_size")
    _check(a.blur_sigma > 0, "anomaly.blur_sigma", a.blur_sigma, "must be > 0")
    _one_of(a.get("paste_shape", "blob"), gaaga.PASTE_SHAPES, "anomaly.paste_shape")
    thinnest = a.get("thinnest_px", 0.0)
    _check(
        0 <= thinnest <= a.patch_size / 2,
        "anomaly.thinnest_px",
        thinnest,
        f"must be in [0, anomaly.patch_size / 2 = {a.patch_size / 2}]",
    )
    opacity = a.get("min_opacity", 1.0)
    _check(0 < opacity <= 1, "anomaly.min_opacity", opacity, "must be in (0, 1]")
    share = a.get("focus_crops", 0.0)
    _check(0 <= share <= 1, "anomaly.focus_crops", share, "must be in [0, 1]")
    src = a.natural_source
    _check(
        natural_images.is_source(src),
        "anomaly.natural_source",
        src,
        natural_images.SOURCES_HELP,
    )


def _validate_score_eval(s, e):
    _one_of(s.method, (*score_options.METHODS, score_options.AUTO), "score.method")
    _one_of(s.get("normalize", "none"), map_levels.NORMALIZE, "score.normalize")
    _one_of(s.get("flip", "none"), score_options.FLIPS, "score.flip")
    levels = tuple(s.get("pyramid", (1,)))
    _check(pyramid.is_pyramid(levels), "score.pyramid", levels, pyramid.HELP)
    _one_of(s.get("reference", "none"), reference.REFERENCES, "score.reference")
    _at_least(s.get("reference_images", 64), 1, "score.reference_images")
    _one_of(s.get("weights", "average"), state_lib.WEIGHTS, "score.weights")
    stride = s.get("stride", 64)
    _check(
        isinstance(stride, int) and stride in score_options.STRIDES,
        "score.stride",
        stride,
        f"must be one of {score_options.STRIDES} (a divisor of the 64-pixel patch, >= 8)",
    )
    scales = tuple(s.scales)
    _check(
        len(scales) > 0 and all(x in score_options.RF_AREAS for x in scales),
        "score.scales",
        scales,
        f"a non-empty subset of {tuple(score_options.RF_AREAS)}",
    )
    _check(0 <= e.val_fraction < 1, "eval.val_fraction", e.val_fraction, "must be in [0, 1)")
    _check(
        0 < e.threshold_quantile < 1, "eval.threshold_quantile", e.threshold_quantile, "in (0, 1)"
    )
    prior = e.get("paste_prior", 0.0)
    _check(0 <= prior < 1, "eval.paste_prior", prior, "must be in [0, 1)")
    check = e.get("held_out_check", False)
    _check(isinstance(check, bool), "eval.held_out_check", check, "must be True or False")
    rim = e.get("threshold_rim", False)
    _check(isinstance(rim, bool), "eval.threshold_rim", rim, "must be True or False")
    _one_of(e.get("image_score", "max"), image_score.IMAGE_SCORES, "eval.image_score")


def validate(config, num_devices: int | None = None):
    """Raises ConfigError naming the first impossible field; returns `config`."""
    _validate_data(config.data)
    _validate_model(config.model, config.loss)
    _validate_train(config.train, num_devices)
    _validate_anomaly(config.anomaly, config.data.image_size)
    _validate_score_eval(config.score, config.eval)
    _check(
        config.score.method != "segment" or config.model.get("segment_head", False),
        "score.method",
        config.score.method,
        "needs a model trained with model.segment_head=True",
    )
    rule = config.eval.get("threshold_rule", "quantile")
    _one_of(rule, calibration.THRESHOLD_RULES, "eval.threshold_rule")
    _check(
        rule != "head" or config.score.method == "segment",
        "eval.threshold_rule",
        rule,
        "is the segment head's boundary: it needs score.method=segment",
    )
    return config
