"""Evaluation metrics (host side, numpy and scipy.ndimage): pixel F1/AUROC/AP/AUPRO and image AUROC.

All pixel metrics pool every pixel of every test image (SPEC section 2). The test set can be
far larger than memory allows to sort at once, so the pixels are summarised by a streaming
`PixelAccumulator` with bounded memory.

Binning. A float32 score is mapped to an order-preserving uint32 key (`score_keys`: its bit
pattern, with the usual sign trick so negative scores sort correctly too). The accumulator
keeps, per distinct key, the number of negative pixels, of positive pixels, and the sum over
positive pixels of
1 / (size of the pixel's defect region) -- the last gives the per-region overlap (PRO) of every
threshold at once: PRO(t) = (1 / #regions) * sum over pixels >= t of 1 / |region|.
While there are at most `max_bins` distinct scores, every bin is one exact float32 value and
every metric is exact (ties included). Past that, the keys are coarsened by dropping low
mantissa bits (one bit at a time) until the bins fit: a bin then spans a relative score range
of 2**(shift - 23), i.e. a log-scale histogram whose resolution adapts to the data and needs
no score range in advance. Curve points stay exact at the bins' lower edges (every pixel of a
bin is >= its lower edge); only pixels sharing a bin count as tied. The bins and their
coarsening are `score_keys.ScoreBins`'. Memory: 28 bytes a bin (32 MB at the default 2**20
bins), twice that with the bins waiting, plus temporaries of one group of at most
`group_pixels`.

`pixel_f1` at the deployable threshold is exact whatever the binning when that threshold is
passed to the constructor (`thresholds=`): the accumulator then also counts TP/FP for it.
`image_auroc` takes the image labels given to `update` (a defective image whose mask is empty or
missing stays defective); images without a mask count there and in no pixel metric. An
image's score is `image_score.image_scores`' (config `eval.image_score`).
"""

from __future__ import annotations

import math

import numpy as np

from cmaae_jax import image_score as image_score_lib
from cmaae_jax.score_keys import ScoreBins, unique_inverse

AUPRO_FPR_LIMIT = 0.3
# The metrics every evaluation reports (metrics.json, per defect type, study records).
HEADLINE_KEYS = (
    "pixel_f1",
    "pixel_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_aupro",
    "image_auroc",
)
# The columns of the result tables (study, baselines): the headline keys but pixel_ap.
TABLE_KEYS = ("pixel_f1", "pixel_f1_max", "pixel_auroc", "pixel_aupro", "image_auroc")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) (x non-decreasing) from x[0] to `limit`, interpolating there."""
    end = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:end], y[:end]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) * 0.5))
    if end < len(x) and xs[-1] < limit:
        frac = (limit - xs[-1]) / (x[end] - xs[-1])
        y_lim = ys[-1] + frac * (y[end] - ys[-1])
        area += (limit - xs[-1]) * (ys[-1] + y_lim) * 0.5
    return area


def binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of `scores` vs boolean `labels` (Mann-Whitney, ties 1/2); NaN if a class is absent."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties given the mean of their ranks (numpy: scipy.stats would add
    ~40 MB of host memory to every process that imports the metrics)."""
    _, group = unique_inverse(x)
    counts = np.bincount(group)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[group]  # each group's last rank, less half


class PixelAccumulator:
    """Streaming summary of (anomaly map, ground-truth mask) pairs; see the module docstring.

    Args:
      thresholds: score thresholds whose confusion counts are kept exactly (e.g. the one from
        `threshold_from_normal`), so `result(t)` for them is exact at any binning.
      max_bins: most distinct bins kept before coarsening (memory: 28 bytes a bin).
      group_pixels: images are processed in groups of about this many pixels (bounds temporaries).
      image_score: how each map scores its image for `image_auroc` (`image_score.image_scores`);
      image_rim: the rim `top_inner` leaves out (evaluation's `image_score.normal_rim`).
    """

    def __init__(
        self,
        thresholds=(),
        max_bins: int = 1 << 20,
        group_pixels: int = 1 << 22,
        image_score: str = "max",
        image_rim: int = 0,
    ):
        self.bins = ScoreBins(max_bins)  # fails here for too few bins
        self.group_pixels = int(group_pixels)
        self.image_score = image_score_lib.check(image_score)  # fails here, not at update
        self.image_rim = int(image_rim)
        self.num_regions = 0
        self.image_scores: list[float] = []
        self.image_labels: list[bool] = []
        self.exact_counts = {float(np.float32(t)): [0, 0] for t in thresholds}  # t -> [tp, fp]

    @property
    def bins_exact(self) -> bool:
        """True while every bin holds a single float32 score (all metrics exact)."""
        self.bins.flush()
        return self.bins.shift == 0

    def update(self, maps, masks, labels=None, has_mask=None) -> None:
        """Add anomaly maps [N,H,W] (or [H,W]) and masks of the same shape (nonzero = defect).

        `labels` [N] (nonzero = defective) label the images for `image_auroc` (None: a mask with
        a defect pixel); images whose `has_mask` [N] is False count in image metrics only.
        """
        maps = np.asarray(maps, dtype=np.float32)
        masks = np.asarray(masks)
        if maps.shape != masks.shape or maps.ndim not in (2, 3):
            raise ValueError(f"maps {maps.shape} and masks {masks.shape}: need equal [N,H,W]")
        if maps.ndim == 2:
            maps, masks = maps[None], masks[None]
        if np.isnan(maps).any():
            raise ValueError("anomaly maps contain NaN")
        labels = masks.reshape(len(masks), -1).any(axis=1) if labels is None else labels
        scores = image_score_lib.image_scores(maps, self.image_score, self.image_rim)
        self.image_scores.extend(scores.tolist())
        self.image_labels.extend((np.asarray(labels).reshape(-1) != 0).tolist())
        if has_mask is not None:
            maps, masks = maps[np.asarray(has_mask, bool)], masks[np.asarray(has_mask, bool)]
        step = max(1, self.group_pixels // max(1, int(np.prod(maps.shape[1:]))))
        for start in range(0, len(maps), step):
            self._update_group(maps[start : start + step], masks[start : start + step] != 0)

    def _update_group(self, maps: np.ndarray, masks: np.ndarray) -> None:
        import scipy.ndimage  # here: a training process never needs it (~15 MB of host memory)

        weights = np.zeros(maps.shape, np.float64)
        for i, mask in enumerate(masks):
            regions, count = scipy.ndimage.label(mask, structure=_EIGHT_CONNECTED)
            if count:
                sizes = np.bincount(regions.ravel())
                weights[i][mask] = 1.0 / sizes[regions[mask]]
                self.num_regions += count
        for t, counts in self.exact_counts.items():
            predicted = maps >= np.float32(t)
            counts[0] += int(np.count_nonzero(predicted & masks))
            counts[1] += int(np.count_nonzero(predicted & ~masks))

        self.bins.add(maps, masks, weights)

    def curves(self) -> dict:
        """Cumulative counts at every bin's lower edge, thresholds in DESCENDING order.

        Keys: `thresholds`, `tp`, `fp` (pixels >= threshold), `pro` (mean per-region overlap),
        `num_pos`, `num_neg`, `num_regions`.
        """
        bins = self.bins
        bins.flush()
        return {
            "thresholds": bins.lower_edges()[::-1],
            "tp": np.cumsum(bins.pos[::-1]),
            "fp": np.cumsum(bins.neg[::-1]),
            "pro": np.cumsum(bins.pro[::-1]) / max(1, self.num_regions),
            "num_pos": int(bins.pos.sum()),
            "num_neg": int(bins.neg.sum()),
            "num_regions": self.num_regions,
        }

    def pr_curve(self):
        """(precision, recall, thresholds) like sklearn: thresholds ascending, and one more
        precision/recall point (1, 0) at the end for "nothing predicted"."""
        c = self.curves()
        precision = c["tp"] / np.maximum(1, c["tp"] + c["fp"])
        recall = c["tp"] / max(1, c["num_pos"])
        return (
            np.append(precision[::-1], 1.0),
            np.append(recall[::-1], 0.0),
            c["thresholds"][::-1].copy(),
        )

    def _counts_at(self, threshold: float, c: dict) -> tuple[int, int]:
        t32 = float(np.float32(threshold))
        if t32 in self.exact_counts:
            tp, fp = self.exact_counts[t32]
            return tp, fp
        above = c["thresholds"] >= t32  # exact when bins_exact
        last = int(np.count_nonzero(above))
        return (int(c["tp"][last - 1]), int(c["fp"][last - 1])) if last else (0, 0)

    def result(self, threshold: float | None = None) -> dict:
        """All metrics as a dict of Python scalars (NaN where undefined, e.g. no defect pixel).

        Keys: `threshold` (float32-rounded, NaN if None), `pixel_f1`, `precision`, `recall`
        (pixels >= threshold; precision 0 when nothing is predicted), `pixel_f1_max`,
        `pixel_f1_max_threshold`, `pixel_auroc`, `pixel_ap`, `pixel_aupro` (PRO integrated over
        FPR in [0, 0.3], divided by 0.3), `image_auroc` (image scores by `image_score`),
        `num_pixels`, `num_positive_pixels`, `num_regions`, `num_images`, `num_bins`,
        `bins_exact`.
        """
        c = self.curves()
        num_pos, num_neg = c["num_pos"], c["num_neg"]
        tp, fp = c["tp"].astype(np.float64), c["fp"].astype(np.float64)
        out = {"threshold": math.nan if threshold is None else float(np.float32(threshold))}
        if threshold is None:
            out.update(pixel_f1=math.nan, precision=math.nan, recall=math.nan)
        else:
            tp_t, fp_t = self._counts_at(threshold, c)
            out["precision"] = tp_t / (tp_t + fp_t) if tp_t + fp_t else 0.0
            out["recall"] = _safe_div(tp_t, num_pos)
            out["pixel_f1"] = _safe_div(2 * tp_t, tp_t + fp_t + num_pos)
        out.update(pixel_f1_max=math.nan, pixel_f1_max_threshold=math.nan)
        out.update(pixel_auroc=math.nan, pixel_ap=math.nan, pixel_aupro=math.nan)
        if num_pos:
            f1 = 2.0 * tp / (tp + fp + num_pos)
            best = int(np.argmax(f1))
            out["pixel_f1_max"] = float(f1[best])
            out["pixel_f1_max_threshold"] = float(c["thresholds"][best])
            recall = tp / num_pos
            out["pixel_ap"] = float(np.sum(np.diff(recall, prepend=0.0) * tp / (tp + fp)))
        if num_pos and num_neg:
            pos_d, neg_d = (b[::-1].astype(np.float64) for b in (self.bins.pos, self.bins.neg))
            wins = np.sum(neg_d * (tp - pos_d + 0.5 * pos_d))
            out["pixel_auroc"] = float(wins / (float(num_pos) * float(num_neg)))
        if self.num_regions and num_neg:
            fpr = np.concatenate([[0.0], fp / num_neg])
            pro = np.concatenate([[0.0], c["pro"]])
            area = _area_up_to(fpr, pro, AUPRO_FPR_LIMIT)
            out["pixel_aupro"] = float(area / AUPRO_FPR_LIMIT)
        out["image_auroc"] = binary_auroc(self.image_scores, self.image_labels)
        out.update(
            num_pixels=num_pos + num_neg,
            num_positive_pixels=num_pos,
            num_regions=self.num_regions,
            num_images=len(self.image_scores),
            num_bins=len(self.bins.keys),
            bins_exact=self.bins_exact,
        )
        return out


def evaluate_maps(maps, masks, threshold: float | None = None, max_bins: int = 1 << 20) -> dict:
    """Metrics of anomaly maps [N,H,W] against masks [N,H,W]: `PixelAccumulator(...).result()`.

    `threshold` is counted exactly; the images are processed in bounded groups.
    """
    acc = PixelAccumulator(thresholds=() if threshold is None else (threshold,), max_bins=max_bins)
    acc.update(maps, masks)
    return acc.result(threshold)


class PerTypeAccumulator:
    """Per-defect-type metrics: one `PixelAccumulator` per defect type, fed that type's images
    and every normal image (label 0), as MVTec-style per-category tables do within a dataset.

    Pooled pixel metrics weigh a defect type by its pixel count, so types with large defects
    (e.g. magnetic tile's `uneven`, 24% of their pixels) dominate them; this keeps small-defect
    types visible.
    """

    def __init__(
        self, defect_types, labels, thresholds=(), max_bins: int = 1 << 18, image_score="max",
        image_rim: int = 0,
    ):  # fmt: skip
        """One accumulator per type name that a defective image (label 1) carries."""
        names = {t for t, label in zip(defect_types, labels, strict=True) if label}
        self.accs = {
            t: PixelAccumulator(thresholds, max_bins, image_score=image_score, image_rim=image_rim)
            for t in sorted(names)
        }

    def update(self, maps, masks, defect_types, labels, has_mask=None) -> None:
        """Maps and masks [N,H,W]; `defect_types` N names; `labels` N (0 normal, 1 defective);
        `has_mask` N booleans or None (`PixelAccumulator.update`)."""
        maps, masks = np.asarray(maps), np.asarray(masks)
        defect_types, labels = np.asarray(defect_types), np.asarray(labels)
        if not len(defect_types) == len(labels) == len(maps):
            raise ValueError("maps, defect_types and labels need the same length")
        for name, acc in self.accs.items():
            keep = (labels == 0) | (defect_types == name)
            if keep.any():
                known = None if has_mask is None else np.asarray(has_mask, bool)[keep]
                acc.update(maps[keep], masks[keep], labels[keep], known)

    def result(self, threshold: float | None = None) -> dict:
        """{type: PixelAccumulator.result(threshold) of that type's images + normal images}."""
        return {name: acc.result(threshold) for name, acc in self.accs.items()}
