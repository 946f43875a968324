"""The keep rule of a scored bank: confidence and novelty thresholds, then a diverse subset per class.

Each sample of a bank has a ``confidence`` (the proxies' mean probability of its own label), a
``novelty`` (its distance to the nearest real training image) and a feature vector in the space
``novelty`` is measured in. :class:`KeepRule` keeps the samples that pass both thresholds and, among
those, a fraction chosen by greedy farthest-point traversal (Gonzalez 1985, "Clustering to minimize
the maximum intercluster distance": the 2-approximation of k-center), so the kept samples cover
their class instead of crowding around its mode; near-duplicates of a kept sample can be dropped on
the way (``min_diversity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_medaug.metrics.memorization import nearest_neighbours

__all__ = ["KeepRule", "farthest_point_order", "sibling_distances"]


@dataclass(frozen=True)
class KeepRule:
    """Which scored bank samples to keep.

    Args:
        min_confidence: keep samples whose mean proxy probability of their own label is at least
            this (0 keeps all; above 0 needs a labelled bank).
        min_novelty: keep samples at least this far from their nearest real training image (any
            value above 0 drops exact copies, whose novelty is 0).
        keep_fraction: of the samples passing both thresholds, keep this fraction (rounded up) per
            group, picked by greedy farthest-point traversal from the most confident one.
        min_diversity: stop a group's traversal once the farthest remaining candidate is closer
            than this to a kept sample, so near-duplicates of kept samples are dropped.
        per_class: groups are the bank's classes (``False``: the whole bank is one group).
    """

    min_confidence: float = 0.0
    min_novelty: float = 0.0
    keep_fraction: float = 1.0
    min_diversity: float = 0.0
    per_class: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence is a probability in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        for name in ("min_novelty", "min_diversity"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} is a distance: 0 or more, got {value}")

    @property
    def uses_confidence(self) -> bool:
        return self.min_confidence > 0

    def keep(self, labels: np.ndarray, confidence: np.ndarray, novelty: np.ndarray, features: Tensor) -> np.ndarray:
        """Boolean keep flag of every sample; ``confidence`` may be NaN when no rule part reads it."""
        passed = novelty >= self.min_novelty
        if self.uses_confidence:
            passed &= confidence >= self.min_confidence
        if self.keep_fraction == 1.0 and self.min_diversity == 0.0:
            return passed  # the traversal would keep every candidate
        keep = np.zeros(len(labels), dtype=bool)
        for group in _groups(labels, self.per_class):
            candidates = group[passed[group]]
            if len(candidates) == 0:
                continue
            # start from the most confident candidate (the first one when confidence is unknown)
            start = int(np.argmax(np.nan_to_num(confidence[candidates], nan=-1.0)))
            count = math.ceil(self.keep_fraction * len(candidates))
            order = farthest_point_order(features[torch.as_tensor(candidates)], start, count, self.min_diversity)
            keep[candidates[order]] = True
        return keep


def _groups(labels: np.ndarray, per_class: bool) -> list[np.ndarray]:
    """Indices of each group of samples, in index order."""
    if not per_class:
        return [np.arange(len(labels))]
    return [np.flatnonzero(labels == label) for label in np.unique(labels)]


def farthest_point_order(features: Tensor, start: int, count: int, min_distance: float = 0.0) -> np.ndarray:
    """Rows picked by greedy farthest-point traversal (Gonzalez 1985): ``start``, then repeatedly the row
    farthest from all picked ones, until ``count`` are picked or the farthest is closer than ``min_distance``.

    Ties go to the lowest index, so the order is deterministic.
    """
    features = features.reshape(features.shape[0], -1).double()
    nearest = (features - features[start]).norm(dim=1)
    nearest[start] = -1.0  # picked rows are never picked again
    picked = [start]
    while len(picked) < min(count, features.shape[0]):
        best = int(nearest.argmax())
        if nearest[best] < min_distance:
            break
        picked.append(best)
        nearest = torch.minimum(nearest, (features - features[best]).norm(dim=1))
        nearest[picked] = -1.0
    return np.asarray(picked, dtype=np.int64)


def sibling_distances(labels: np.ndarray, features: Tensor, per_class: bool = True) -> np.ndarray:
    """Distance of each sample to its nearest other sample of its group (0: it has a duplicate in the
    bank; ``inf``: it is alone in its group)."""
    distances = np.full(len(labels), np.inf)
    for group in _groups(labels, per_class):
        if len(group) > 1:
            rows = features[torch.as_tensor(group)]
            # k=2: the nearest row is the sample itself (or a duplicate at the same distance 0)
            d, _ = nearest_neighbours(rows, rows, k=2)
            distances[group] = d[:, 1].double().cpu().numpy()
    return distances
