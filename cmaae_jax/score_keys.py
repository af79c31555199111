"""Order-preserving uint32 keys of float32 scores, and the bounded bins of them (`ScoreBins`)
that `metrics.PixelAccumulator` summarises pixels in.

A float32's bit pattern, with the sign trick (negative scores: all bits flipped; others: the
sign bit set), sorts like the score. Shifting a key right by `shift` bits coarsens it: the bin
then spans a relative score range of 2**(shift - 23).
"""

import numpy as np

_SIGN = np.uint32(0x80000000)


def score_keys(scores32: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 scores (-0.0 is folded onto +0.0)."""
    bits = (scores32 + np.float32(0.0)).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray, shift: int) -> np.ndarray:
    """Smallest float32 score in each bin `keys` (keys at coarsening `shift`), as float64."""
    full = keys.astype(np.uint32) << np.uint32(shift)
    bits = np.where(full & _SIGN, full ^ _SIGN, ~full)
    values = bits.view(np.float32).astype(np.float64)
    return np.where(np.isnan(values), -np.inf, values)


def unique_inverse(keys: np.ndarray, presorted: bool = False) -> tuple:
    """`np.unique(keys, return_inverse=True)` for keys made of sorted runs (the kept bins and
    each waiting group's), or already sorted (`presorted`, coarsening): a stable sort finds
    the runs (numpy's timsort) where `np.unique` sorts from scratch; the same result."""
    order = None if presorted else np.argsort(keys, kind="stable")
    ordered = keys if presorted else keys[order]
    first = np.empty(len(ordered), bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    rank = np.cumsum(first) - 1
    if presorted:
        return ordered[first], rank
    inverse = np.empty_like(rank)
    inverse[order] = rank
    return ordered[first], inverse


class ScoreBins:
    """At most `max_bins` bins of scores, each with its count of negative pixels (`neg`), of
    positive pixels (`pos`) and a weight summed over its positive pixels (`pro`), keys
    ascending. While the scores number at most `max_bins` distinct values every bin is one
    float32; past that the keys are shifted right one bit at a time (`shift`) until they fit.
    Groups' bins wait until they number `max_bins` and are then merged at once (merging after
    each group sorted every kept bin each time); the merge ends at the least shift that keeps
    all the data's bins within `max_bins`."""

    def __init__(self, max_bins: int):
        if max_bins < 16:
            raise ValueError(f"max_bins must be >= 16, got {max_bins}")
        self.max_bins = int(max_bins)
        self.shift = 0
        self.keys = np.zeros(0, np.uint32)
        self.neg = np.zeros(0, np.int64)
        self.pos = np.zeros(0, np.int64)
        self.pro = np.zeros(0, np.float64)
        self._waiting: list[tuple] = []  # groups' (keys, neg, pos, pro) not merged yet
        self._waiting_bins = 0

    def add(self, scores32: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> None:
        """One group: float32 scores, their positive flags (same shape) and a weight per
        positive pixel (`weights[positive]`)."""
        keys = score_keys(scores32) >> np.uint32(self.shift)
        neg_keys, neg_counts = np.unique(keys[~positive], return_counts=True)
        pos_keys, inverse, pos_counts = np.unique(
            keys[positive], return_inverse=True, return_counts=True
        )
        pos_weights = np.bincount(
            inverse.ravel(), weights=weights[positive], minlength=len(pos_keys)
        )
        no_n, no_p = np.zeros(len(neg_keys), np.int64), np.zeros(len(pos_keys), np.int64)
        self._waiting.append((neg_keys, neg_counts, no_n, no_n.astype(np.float64)))
        self._waiting.append((pos_keys, no_p, pos_counts, pos_weights))
        self._waiting_bins += len(neg_keys) + len(pos_keys)
        if self._waiting_bins >= self.max_bins:
            self.flush()

    def flush(self) -> None:
        """Merges the waiting groups' bins into the kept ones, then coarsens while there are
        more than `max_bins`."""
        if not self._waiting:
            return
        columns = zip((self.keys, self.neg, self.pos, self.pro), *self._waiting, strict=True)
        self._waiting, self._waiting_bins = [], 0
        self._merge(*(np.concatenate(column) for column in columns))
        while len(self.keys) > self.max_bins:
            self.shift += 1
            self._merge(self.keys >> np.uint32(1), self.neg, self.pos, self.pro, presorted=True)

    def _merge(self, keys, neg, pos, pro, presorted=False) -> None:
        self.keys, inverse = unique_inverse(keys, presorted)
        size = len(self.keys)
        self.neg = np.bincount(inverse, weights=neg, minlength=size).round().astype(np.int64)
        self.pos = np.bincount(inverse, weights=pos, minlength=size).round().astype(np.int64)
        self.pro = np.bincount(inverse, weights=pro, minlength=size)

    def lower_edges(self) -> np.ndarray:
        """The smallest score of each kept bin, float64, ascending (after `flush`)."""
        return key_values(self.keys, self.shift)
