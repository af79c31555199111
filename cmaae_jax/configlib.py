"""Config validation: impossible values are rejected before anything is compiled."""

from cmaae_jax import model

FORMATS = ("mvtec", "dagm", "folder", "synthetic")


class ConfigError(ValueError):
    """A config field has an impossible value; the message names the field."""


def _check(ok, field, value, why):
    if not ok:
        raise ConfigError(f"config field {field}={value!r}: {why}")


def validate(config, num_devices: int | None = None):
    """Raises ConfigError naming the first impossible field."""
    d, m, t, a, s, e = (
        config.data,
        config.model,
        config.train,
        config.anomaly,
        config.score,
        config.eval,
    )
    _check(d.format in FORMATS, "data.format", d.format, f"must be one of {FORMATS}")
    _check(
        isinstance(d.image_size, int) and d.image_size >= 64 and d.image_size % 64 == 0,
        "data.image_size",
        d.image_size,
        "must be a positive multiple of 64 (the patch size)",
    )
    _check(
        m.variant in model.VARIANTS, "model.variant", m.variant, f"must be one of {model.VARIANTS}"
    )
    _check(m.memory_size >= 1, "model.memory_size", m.memory_size, "must be at least 1")
    _check(m.latent_dim >= 1, "model.latent_dim", m.latent_dim, "must be at least 1")
    _check(m.similarity in ("cosine", "dot"), "model.similarity", m.similarity, "cosine or dot")
    _check(m.gate in ("softmax", "sigmoid"), "model.gate", m.gate, "softmax or sigmoid")
    _check(m.shrink_threshold < 1, "model.shrink_threshold", m.shrink_threshold, "must be < 1")
    _check(m.dtype in ("float32", "bfloat16"), "model.dtype", m.dtype, "float32 or bfloat16")
    _check(
        m.conv_impl in ("auto", "matmul", "xla"),
        "model.conv_impl",
        m.conv_impl,
        "auto, matmul or xla",
    )
    _check(config.loss.w_rec >= 0, "loss.w_rec", config.loss.w_rec, "must be >= 0")
    _check(config.loss.w_sparse >= 0, "loss.w_sparse", config.loss.w_sparse, "must be >= 0")
    _check(t.stage1_steps >= 0, "train.stage1_steps", t.stage1_steps, "must be >= 0")
    _check(t.stage2_steps >= 0, "train.stage2_steps", t.stage2_steps, "must be >= 0")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.crops_per_image >= 1, "train.crops_per_image", t.crops_per_image, "must be >= 1")
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
    _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "must be > 0")
    _check(0 <= t.b1 < 1 and 0 <= t.b2 < 1, "train.b1/b2", (t.b1, t.b2), "must be in [0, 1)")
    _check(
        t.stage2_target in ("clean", "input"),
        "train.stage2_target",
        t.stage2_target,
        "clean or input",
    )
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", t.checkpoint_every, "must be >= 1")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "must be >= 1")
    _check(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    _check(
        0 < a.patch_size <= d.image_size,
        "anomaly.patch_size",
        a.patch_size,
        f"must be in (0, data.image_size={d.image_size}]",
    )
    _check(a.bank_size >= 1, "anomaly.bank_size", a.bank_size, "must be >= 1")
    _check(a.blur_sigma > 0, "anomaly.blur_sigma", a.blur_sigma, "must be > 0")
    src = a.natural_source
    _check(
        src == "procedural" or src.startswith("dir:") or src.startswith("tfds:"),
        "anomaly.natural_source",
        src,
        "procedural, dir:PATH or tfds:NAME",
    )
    _check(s.method in ("msfr", "pixel"), "score.method", s.method, "msfr or pixel")
    normalize = s.get("normalize", "none")
    _check(normalize in ("none", "median"), "score.normalize", normalize, "none or median")
    scales = tuple(s.scales)
    _check(
        len(scales) > 0 and all(x in (1, 2, 3) for x in scales),
        "score.scales",
        scales,
        "a non-empty subset of (1, 2, 3)",
    )
    _check(0 <= e.val_fraction < 1, "eval.val_fraction", e.val_fraction, "must be in [0, 1)")
    _check(
        0 < e.threshold_quantile < 1, "eval.threshold_quantile", e.threshold_quantile, "in (0, 1)"
    )
    return config
