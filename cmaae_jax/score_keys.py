"""Order-preserving uint32 keys of float32 scores: the bins of `metrics.PixelAccumulator`.

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
