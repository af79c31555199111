"""Threshold calibration by the label-free rule: a threshold chosen from normal images only.

No defect label is used, so the F1 at this threshold (`pixel_f1`) is the deployable number.
Three rules (`eval.threshold_rule`): `quantile`, a quantile of held-out normal pixel scores;
`head`, the segment head's own decision boundary (score.method=segment), p = 0.5, which its
training on the paste masks put between normal and anomalous pixels; and `pastes`: the
held-out normal images are scored as they are and with GAAGA pastes (the training's
artificial anomalies stand in for the unknown defects), which give each threshold t a true
positive rate TPR(t) over the pasted pixels and a false positive rate FPR(t) over the normal
ones. F1 depends on how common defects are, which no label-free rule knows; the rule takes
the t of best F1 at an assumed share P of defect pixels (`eval.paste_prior`):

    F1_P(t) = 2 P TPR / (P TPR + P + (1 - P) FPR)

With P = 0 it is the tenth session's rule instead: best F1 with the pixels as they were
pasted (3-4% of a pasted image), never below the quantile rule's threshold.

`geomean` takes the geometric mean of the quantile rule's threshold and the pastes rule's:
the pastes, large and bright, put their best threshold above the best one for faint thin
defects, and the normal pixels' quantile lies below the best one for larger defects
(RESULTS.md, thirty-first session). `auto` is `geomean` for maps z-scored per position
(aligned images, `score.reference`) and `pastes` for every other map (`resolve_rule`;
RESULTS.md, thirty-second session). Every evaluation that scores the pastes records all
three candidates, and the F1 at each, in metrics.json.
"""

import dataclasses
import math

import jax
import numpy as np

from cmaae_jax import gaaga, image_score, metrics, natural_images

THRESHOLD_RULES = ("quantile", "head", "pastes", "geomean", "auto")  # eval.threshold_rule
# the rules that score GAAGA pastes on held-out images
PASTE_RULES = ("pastes", "geomean", "auto")
AUTO = "auto"
# What `auto` resolves to: maps z-scored per position (the aligned images' reference), others
# (thirty-second session's plan 7, docs/results/aligned30/PLAN.md).
AUTO_RULES = {"zscored": "geomean", "other": "pastes"}
# The segment head's map is softplus(logit) = -log(1 - p): p = 0.5 is log 2.
HEAD_THRESHOLD = math.log(2.0)
PASTE_KEY = 1  # folded into the training seed: the `pastes` rule's pastes differ from training's
# The held-out check (metrics.json "held_out", eval/held_out.json): how the maps separate the
# GAAGA-pasted held-out images' pasted pixels from the clean held-out images' pixels.
HELD_OUT_KEYS = ("pixel_auroc", "pixel_aupro", "pixel_f1_max", "image_auroc")


def resolve_rule(rule: str, zscored: bool) -> str:
    """The threshold rule `rule` names: `auto` resolved by whether the maps are z-scored
    per position (`AUTO_RULES`); any other rule as it is."""
    if rule != AUTO:
        return rule
    return AUTO_RULES["zscored" if zscored else "other"]


def label_free_threshold(rule: str, normal_maps, quantile: float) -> float:
    """The threshold of `rule`: `quantile` (`threshold_from_normal` of `normal_maps`) or
    `head` (`HEAD_THRESHOLD`, whatever the normal maps); for `pastes` and `geomean`, the
    quantile, which the caller combines with `paste_threshold` (`rule_threshold`)."""
    if rule == "head":
        return HEAD_THRESHOLD
    if rule not in ("quantile", *PASTE_RULES):
        raise ValueError(f"eval.threshold_rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    return threshold_from_normal(normal_maps, quantile)


def describe(rule: str, quantile: float, prior: float = 0.0) -> str:
    """The rule as metrics.json records it."""
    if rule == "pastes" and prior > 0:
        return (
            f"best pixel F1 over held-out normal images and their GAAGA-pasted copies, "
            f"weighted as if defect pixels were a share {prior:g} of all pixels"
        )
    if rule == "pastes":
        return (
            f"best pixel F1 over held-out normal images and their GAAGA-pasted copies, at "
            f"least the quantile {quantile} of held-out normal pixel scores"
        )
    if rule == "geomean":
        return (
            f"geometric mean of the quantile {quantile} of held-out normal pixel scores and "
            f"the pastes rule's threshold ({describe('pastes', quantile, prior)})"
        )
    if rule == "head":
        return f"segment head boundary p = 0.5 (map >= log 2 = {HEAD_THRESHOLD:.4f})"
    return f"quantile {quantile} of held-out normal pixel scores"


def threshold_from_normal(
    normal_maps, quantile: float = 0.999, max_pixels: int = 20_000_000, seed: int = 0
) -> float:
    """Label-free threshold: the `quantile` of the pooled pixel scores of NORMAL images only.

    A pixel is flagged when its score >= the threshold. Above `max_pixels` pooled pixels the
    quantile is taken on a uniform random subsample (with replacement) of `max_pixels` pixels,
    drawn with `seed`, so the result is deterministic. Guard against degeneration (cf. anomalib's
    adaptive threshold falling to the minimum): if the quantile is not above the smallest normal
    score (e.g. all normal scores equal, or heavy ties at the bottom), the next float32 above it
    is returned, so pixels at that score are not flagged.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    scores = np.asarray(normal_maps, dtype=np.float32).ravel()
    if scores.size == 0 or np.isnan(scores).any():
        raise ValueError("normal maps are empty or contain NaN")
    if scores.size > max_pixels:
        rng = np.random.default_rng(seed)
        scores = scores[rng.integers(0, scores.size, size=max_pixels)]
    value = np.float32(np.quantile(scores, quantile))
    if value <= scores.min():
        value = np.nextafter(value, np.float32(np.inf))
    return float(value)


def paste_accumulator(normal_maps, pasted_maps, paste_masks) -> metrics.PixelAccumulator:
    """Pixel counts with every pixel of `normal_maps` (held-out normal images) negative and
    those of `pasted_maps` labelled by `paste_masks` (lists of [h_i, w_i], or [N, H, W])."""
    acc = metrics.PixelAccumulator()
    for amap in normal_maps:
        acc.update(amap, np.zeros(np.shape(amap), bool))
    for amap, mask in zip(pasted_maps, paste_masks, strict=True):
        acc.update(amap, mask)
    return acc


def held_out_check(normal_maps, pasted_maps, paste_masks) -> dict:
    """`HELD_OUT_KEYS` over `paste_accumulator`'s pixels, and the image AUROC of the clean
    against the pasted held-out images (image score: the map's maximum). No defect label is
    used: a quality estimate for data without labelled defects, and to compare runs."""
    acc = paste_accumulator(normal_maps, pasted_maps, paste_masks)
    result = acc.result()
    labels = np.r_[np.zeros(len(normal_maps), bool), np.ones(len(pasted_maps), bool)]
    scores = [float(np.max(m)) for m in (*normal_maps, *pasted_maps)]
    result["image_auroc"] = metrics.binary_auroc(np.asarray(scores), labels)
    return {k: result[k] for k in HELD_OUT_KEYS}


def paste_threshold(normal_maps, pasted_maps, paste_masks, prior: float = 0.0) -> float:
    """The `pastes` rule's threshold over `paste_accumulator`'s pixels: best F1_P at the
    share `prior` = P of defect pixels (module docstring), or with P = 0 best F1 with the
    pixels as pasted."""
    if not 0.0 <= prior < 1.0:
        raise ValueError(f"eval.paste_prior must be in [0, 1), got {prior}")
    acc = paste_accumulator(normal_maps, pasted_maps, paste_masks)
    if not acc.curves()["num_pos"]:
        raise ValueError("the pastes rule got no pasted pixel to calibrate on")
    if prior == 0.0:
        return acc.result()["pixel_f1_max_threshold"]
    return prior_f1_threshold(acc, prior)


def prior_f1_threshold(acc: metrics.PixelAccumulator, prior: float) -> float:
    """The threshold of best F1_P (module docstring) over `acc`'s positives and negatives,
    at the share `prior` = P of positive pixels; the highest such threshold on ties."""
    c = acc.curves()  # thresholds descending, so argmax takes the highest on ties
    tpr = c["tp"] / c["num_pos"]
    fpr = c["fp"] / max(1, c["num_neg"])
    f1 = 2 * prior * tpr / (prior * tpr + prior + (1 - prior) * fpr)
    return float(c["thresholds"][int(np.argmax(f1))])


def pasted_split(split, config):
    """(`split` with GAAGA pastes on its images, paste masks [h_i, w_i]): the training's
    stage-2 anomalies (`config.anomaly`) on each image's valid region, drawn with the run's
    seed and `PASTE_KEY`; what the `pastes` rule scores beside the clean held-out images."""
    bank = natural_images.bank_for_config(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.train.seed), PASTE_KEY)
    size = config.data.image_size
    pasted, masks = gaaga.paste_on_host(split.images, split.sizes, bank, key, config.anomaly, size)
    images = np.stack(pasted) if split.stacked else pasted
    return dataclasses.replace(split, images=images), masks


def pastes_rule(quantile_threshold: float, pastes_threshold: float, prior: float) -> float:
    """The `pastes` rule's threshold: the pastes' own at an assumed defect share (`prior` >
    0), or with `prior` 0 the pastes' best F1 floored at the quantile rule's."""
    return pastes_threshold if prior > 0 else max(quantile_threshold, pastes_threshold)


def rule_threshold(rule: str, quantile_threshold: float, pastes_best: float, prior: float):
    """The threshold of a resolved `rule` from the quantile rule's threshold and the pastes'
    best one (`paste_threshold` at `prior`): `pastes` (`pastes_rule`), `geomean` (of the
    quantile's and the pastes rule's), else the quantile's."""
    pastes = pastes_rule(quantile_threshold, pastes_best, prior)
    if rule == "geomean":
        return geomean(quantile_threshold, pastes)
    return pastes if rule == "pastes" else quantile_threshold


def geomean(quantile_threshold: float, pastes_rule_threshold: float) -> float:
    """The `geomean` rule's threshold: sqrt(quantile's x pastes rule's); their midpoint
    where either is not positive (no geometric mean)."""
    q, p = float(quantile_threshold), float(pastes_rule_threshold)
    return math.sqrt(q * p) if q > 0 and p > 0 else 0.5 * (q + p)


def rims(held_out_maps, config) -> dict:
    """metrics.json's `image_rim` and `threshold_rim`: the held-out normal maps' rim
    (`image_score.normal_rim`) where `eval.image_score=top_inner` leaves it out of the image
    scores and where `eval.threshold_rim` leaves it out of the threshold rule; 0 where not."""
    inner = config.eval.get("image_score", "max") == image_score.INNER
    threshold = config.eval.get("threshold_rim", False)
    rim = 0
    if inner or threshold:
        rim = image_score.normal_rim(held_out_maps, config.data.image_size)
    return {"image_rim": rim if inner else 0, "threshold_rim": rim if threshold else 0}
