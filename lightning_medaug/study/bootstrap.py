"""Paired differences between two arms over seeds, with a seeded bootstrap confidence interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_interval"]


def bootstrap_interval(differences: Sequence[float], level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired per-seed ``differences`` (Efron & Tibshirani
    1993): the seeds are resampled with replacement ``resamples`` times. With one difference the
    interval is that difference: one seed has no spread to resample."""
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"differences must be a non-empty list of numbers, got {differences!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
