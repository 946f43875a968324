"""Mixing into a streamed real training set (an ``IterableDataset``, WebDataset-style).

A stream has no indices to sample, so :class:`MixedIterable` interleaves: after each real sample
it emits as many synthetic ones as keep the running synthetic fraction at the ratio (``add``), or
it emits a synthetic sample instead of a real one as often as the ratio says (``replace``). The
user's stream shards itself across ranks and loader workers as it always does; the synthetic
picks are a permutation of the pool split across ranks and workers, so no two of them emit the
same synthetic sample in one epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_medaug.mixing.adapter import SyntheticAdapter
from lightning_medaug.mixing.sampler import ratio_at

__all__ = ["MixedIterable", "EpochLoader"]


class MixedIterable(IterableDataset):
    """A real ``IterableDataset`` with synthetic samples interleaved at ``ratio``."""

    def __init__(self, real: IterableDataset, synthetic: SyntheticAdapter, ratio: float, mode: str = "add",
                 seed: int = 0, ratio_schedule: dict[int, float] | None = None, num_replicas: int = 1,
                 rank: int = 0, mark_real: Callable[[Any], Any] | None = None):
        self.real, self.synthetic = real, synthetic
        self.ratio, self.mode, self.seed = ratio, mode, seed
        self.ratio_schedule = dict(ratio_schedule or {})
        self.num_replicas, self.rank, self.mark_real = num_replicas, rank, mark_real
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _synthetic_order(self) -> Iterator[int]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        shards, shard = self.num_replicas * workers, self.rank * workers + worker_id
        perm = np.random.default_rng([self.seed, self.epoch, 17]).permutation(len(self.synthetic))
        mine = perm[shard::shards] if len(perm) >= shards else perm
        while True:  # a pool smaller than the stream's need repeats, in the same order
            yield from mine.tolist()

    def __iter__(self) -> Iterator[Any]:
        ratio = ratio_at(self.ratio, self.ratio_schedule, self.epoch)
        per_real = ratio / (1.0 - ratio) if self.mode == "add" else ratio
        order, due = self._synthetic_order(), 0.0
        mark = self.mark_real or (lambda s: s)
        for sample in self.real:
            due += per_real
            if self.mode == "replace" and due >= 1.0:
                due -= 1.0
                yield self.synthetic[next(order)]
                continue
            yield mark(sample)
            while self.mode == "add" and due >= 1.0:
                due -= 1.0
                yield self.synthetic[next(order)]


class EpochLoader(DataLoader):
    """A ``DataLoader`` over a :class:`MixedIterable` that tells it the epoch before each pass.

    Lightning sets the epoch on samplers only, and an ``IterableDataset`` has none; the epoch is
    set here in the main process, before workers receive their copy of the dataset.
    """

    def __init__(self, dataset: MixedIterable, epoch_of: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self._epoch_of, self._passes = epoch_of, 0

    def __iter__(self):
        self.dataset.set_epoch(self._epoch_of() if self._epoch_of is not None else self._passes)
        self._passes += 1
        return super().__iter__()
