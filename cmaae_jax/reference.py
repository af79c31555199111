"""A per-position reference of normal anomaly maps (config `score.reference`), for aligned parts.

Where every image shows the same part in the same place (a fixture, a conveyor stop), the
auto-encoder's residual has a fixed structure: the part's edges, holes and markings are
reconstructed a little worse than flat surface in every image, normal or not. That structure
sets the label-free threshold and hides small defects. The reference is the mean of the valid
maps of normal training images, resampled to a common shape; a map minus the reference keeps
what differs from normal at that place. Images that are not aligned gain nothing from it (their
mean map is a blur of everything), so `auto` decides from normal images alone. Images of
different sizes cannot show a part in one fixed frame, so `auto` uses no reference for them
(on magnetic tile, whose images differ in size, a resampled reference cost AUPRO; RESULTS.md).
For images of one size,

    excess(maps) = quantile_q(pooled pixel scores) - mean(pooled pixel scores)

is the margin a defect must add to a typical normal pixel to cross the label-free threshold
(the same quantile q, `eval.threshold_quantile`). Subtracting a reference shifts each position
by a constant, so a defect's added score is unchanged; the images count as aligned when it
lowers that margin on the held-out normal maps (which never enter the reference) by
MIN_NARROWING at least. No defect label is read. `score.method=auto` also changes the map
method for aligned images (`score_options.ALIGNED_METHOD`), so a false "aligned" costs more than a
reference: hence the margin.

`zscore` also divides by the normal maps' spread at each position, sqrt(var + median var):
where normal images differ from each other (an edge that moves with the fixture's play,
machining marks) a residual counts less than on flat surface. What `auto` applies once it has
decided that the images are aligned is AUTO_KIND (measured on the synthetic part and its thin
cracks: RESULTS.md, twenty-fifth session).

Maps with parts (`msfr_pixel` scored with `components`: [h, w, K], `score_options.COMPONENTS`) get
a reference per part, [2K, h, w] (mean and spread of part 0, then of part 1, ...): each part
is referred to its own normal statistics, then the parts are averaged. Without a reference
their average is the map (`fuse`). Z-scoring MSFR and the pixel residual apart raised thin
cracks' AUPRO and F1 max over z-scoring their average (RESULTS.md, thirtieth session); the
z-scores are weighted PART_WEIGHTS (four times on the pixel residual: thirty-first session). The
weights live in the spreads (`of_kind`): a part of weight w_k has its spread times
sum(w) / (K w_k), so the plain average of the referred parts is their weighted mean and
whatever applies a saved reference (here, predict, the exports) needs nothing else;
references saved before the weights were averaged with equal ones, and still are.
"""

import numpy as np
from PIL import Image

from cmaae_jax import calibration

REFERENCES = ("none", "mean", "zscore", "auto")  # config score.reference
AUTO_KIND = "zscore"  # what `auto` applies to aligned images (RESULTS.md, twenty-fifth session)
# `auto` finds images aligned when the mean narrows the held-out normal tail by this share at
# least. Aligned synthetic parts: 0.18-0.89 under one light, 0.07-0.69 under drifting light or
# in a loose fixture; unaligned textures (wood, carpet, tile): 0.010-0.026 (RESULTS.md,
# twenty-sixth and twenty-seventh sessions, plan 9; 0.1 before it)
MIN_NARROWING = 0.05
FILE = "reference.npy"  # in <workdir>/eval/: [2K, h, w], K parts' mean and spread (ones: `mean`)
# The z-scored parts' weights (`score_options.COMPONENTS` order: MSFR, pixel residual). Equal
# weights gained on thin cracks over z-scoring the averaged map; 1 : 2 more (five fresh crack runs:
# AUPRO +0.012..+0.034, F1 max +0.033..+0.060), 1 : 4 more again (five more: AUPRO -0.000..
# +0.013, F1 max +0.002..+0.036); larger defects within 0.01 at each step (rules written
# first: docs/results/aligned30/PLAN.md, plans 3 and 5; RESULTS.md).
PART_WEIGHTS = (1.0, 4.0)


def resample(ref, shape) -> np.ndarray:
    """A [h, w] map or a [k, h, w] stack of them bilinearly resampled to `shape` (h, w);
    returned as is when it already fits."""
    ref = np.asarray(ref, np.float32)
    h, w = shape
    if ref.shape[-2:] == (h, w):
        return ref
    if ref.ndim == 3:
        return np.stack([resample(plane, shape) for plane in ref])
    return np.asarray(Image.fromarray(ref).resize((w, h), Image.BILINEAR), np.float32)


def build(normal_maps) -> np.ndarray:
    """float32 [2K, h_0, w_0] of valid normal maps (a list of [h_i, w_i], or of [h_i, w_i, K]
    maps with K parts), each resampled to the shape of the first: per part, the per-position
    mean and `spread`."""
    if len(normal_maps) == 0:
        raise ValueError("no normal maps to build a reference from")
    shape = np.shape(normal_maps[0])[:2]
    total, squares = 0.0, 0.0
    for m in normal_maps:
        m = resample(_planes(m), shape).astype(np.float64)  # [K, h_0, w_0]
        total, squares = total + m, squares + m * m
    mean = total / len(normal_maps)
    var = np.maximum(squares / len(normal_maps) - mean * mean, 0.0)
    return np.stack([p for k in range(len(mean)) for p in (mean[k], spread(var[k]))]).astype(
        np.float32
    )


def _planes(map_hxw___) -> np.ndarray:
    """A map [h, w] or [h, w, K] as K planes [K, h, w]."""
    m = np.asarray(map_hxw___, np.float32)
    return m[None] if m.ndim == 2 else np.moveaxis(m, -1, 0)


def parts(ref) -> int:
    """How many map parts `ref` refers (1 for a plain map's reference or None)."""
    return 1 if ref is None else np.shape(ref)[0] // 2


def spread(var) -> np.ndarray:
    """sqrt(var + median var) of a per-position variance: no position is amplified more than
    1 / sqrt(median var) (the mean var, or 1, where the median is 0)."""
    var = np.asarray(var, np.float64)
    floor = np.median(var) or var.mean() or 1.0  # constant at most positions: still > 0
    return np.sqrt(var + floor)


def of_kind(ref, kind):
    """`ref` as applied by `kind`: `zscore` as built (with parts: PART_WEIGHTS folded into
    the spreads, module docstring), `mean` with a spread of ones (parts weighted equally);
    None for no kind or no reference."""
    if ref is None or kind is None:
        return None
    ref = np.array(ref, np.float32)
    if kind == "mean":
        ref[1::2] = 1.0
    elif parts(ref) > 1:
        if parts(ref) != len(PART_WEIGHTS):
            raise ValueError(f"a reference of {parts(ref)} parts; weights for {PART_WEIGHTS}")
        weights = np.asarray(part_weights(kind), np.float32)
        ref[1::2] *= (weights.sum() / (len(weights) * weights))[:, None, None]
    return ref


def part_weights(kind) -> tuple:
    """The weights `of_kind` gives the parts of a reference of `kind`: PART_WEIGHTS when
    z-scored, equal ones for `mean`."""
    return PART_WEIGHTS if kind == "zscore" else (1.0,) * len(PART_WEIGHTS)


def kind_of(ref) -> str:
    """`mean` when the reference's spreads are all ones, else `zscore`."""
    return "mean" if np.all(np.asarray(ref)[1::2] == 1.0) else "zscore"


def apply(ref, maps):
    """(map - mean) / spread: one map [h, w], a stack [N, h, w] or a list of maps; `maps`
    unchanged when `ref` is None. With a reference of K > 1 parts the maps carry them on a
    last axis ([h, w, K] or [N, h, w, K]): each part minus its mean, over its spread, then
    the parts averaged ([h, w] or [N, h, w])."""
    if ref is None:
        return maps
    if isinstance(maps, (list, tuple)):
        return [apply(ref, m) for m in maps]
    maps = np.asarray(maps, np.float32)
    if parts(ref) == 1:
        mean, spread = resample(ref, maps.shape[-2:])
        return (maps - mean) / spread
    planes = np.moveaxis(resample(ref, maps.shape[-3:-1]), 0, -1)  # [h, w, 2K]
    return ((maps - planes[..., 0::2]) / planes[..., 1::2]).mean(-1)


def fuse(maps):
    """Maps with parts on a last axis ([h, w, K], a stack or a list) as their average: the
    map without a reference."""
    if isinstance(maps, (list, tuple)):
        return [fuse(m) for m in maps]
    return np.asarray(maps, np.float32).mean(-1)


def excess(maps, quantile: float) -> float:
    """quantile - mean of the pooled pixel scores of `maps` (a list of maps of any shapes)."""
    pooled = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    q = calibration.threshold_from_normal(pooled, quantile)
    return float(q - pooled.astype(np.float64).mean())


def choose(setting: str, ref, held_out_maps, quantile: float, one_size: bool = True):
    """(kind applied: `mean` | `zscore` | None, record) for `setting` none | mean | zscore |
    auto. `one_size`: every map the reference was built from and every held-out map had the
    same shape. `auto` applies AUTO_KIND where the mean narrows the held-out normal tail by
    MIN_NARROWING at least; the record holds both excesses on the held-out normal maps when
    they were computed."""
    if setting not in REFERENCES:
        raise ValueError(f"score.reference must be one of {REFERENCES}, got {setting!r}")
    record = {"setting": setting}
    if setting == "none":
        return None, {**record, "used": False}
    plain = fuse(held_out_maps) if parts(ref) > 1 else held_out_maps
    without = excess(plain, quantile)
    record.update(one_size=one_size, excess_none=without)
    if ref is None:  # auto on images of several sizes: evaluation built none
        return None, {**record, "used": False}
    with_ref = excess(apply(of_kind(ref, "mean"), list(held_out_maps)), quantile)
    used = setting != "auto" or (one_size and with_ref <= (1.0 - MIN_NARROWING) * without)
    kind = (AUTO_KIND if setting == "auto" else setting) if used else None
    record.update(used=used, excess_mean=with_ref, kind=kind)
    return kind, record


def narrowing(record: dict) -> float | None:
    """The share by which the mean narrowed the held-out normal tail (1 - excess_mean /
    excess_none) in `choose`'s record, or None where it was not computed."""
    if record.get("excess_mean") is None or not record.get("excess_none"):
        return None
    return 1.0 - record["excess_mean"] / record["excess_none"]


def near_miss(record: dict) -> bool:
    """`auto` found the images unaligned although the mean narrowed their normal tail by half
    MIN_NARROWING at least: where the images may be aligned after all."""
    share = narrowing(record)
    unaligned = record.get("setting") == "auto" and not record.get("used")
    return unaligned and share is not None and share >= MIN_NARROWING / 2


def save(path, ref) -> None:
    """Writes the reference [2K, h, w] atomically (a reader never sees half a file). None (an
    evaluation that chose no reference) removes the file an earlier one left: it is derived
    data, rebuilt by evaluating again, and predict and export must not apply it."""
    if ref is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(ref, np.float32))
    tmp.replace(path)


def load(path):
    """The saved reference [2K, h, w], or None when there is none. A [h, w] file (written
    before the spread was kept) is a mean: its spread is ones."""
    if not path.is_file():
        return None
    ref = np.load(path)
    return np.stack([ref, np.ones_like(ref)]) if ref.ndim == 2 else ref
