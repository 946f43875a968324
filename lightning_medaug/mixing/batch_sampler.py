"""Mixing into batches chosen by the user's own batch sampler.

Some projects choose whole batches themselves (class-balanced batches, batches grouped by size or
by patient): :class:`MixBatchSampler` keeps each of those batches and puts the synthetic share on
top of it (``add``) or in place of some of its samples (``replace``), so the user's batching rule
still decides which real samples train together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lightning_medaug.bank.plan import largest_remainder
from lightning_medaug.mixing.sampler import MixSampler, ratio_at, seeded_rngs, synthetic_count

__all__ = ["MixBatchSampler"]


class MixBatchSampler:
    """Batches of the user's ``batch_sampler`` over real indices, with synthetic indices mixed in.

    Indices follow ``ConcatDataset([real, synthetic])``. The real batches of an epoch are drawn
    with a generator seeded by ``(seed, epoch)`` (the same on every rank); the epoch's synthetic
    count is that of :func:`synthetic_count` over all its real samples, spread over the batches in
    proportion to their size. Under DDP each rank takes every ``num_replicas``-th batch.
    """

    def __init__(self, batch_sampler: Any, num_real: int, synthetic_labels: Sequence[int] | np.ndarray,
                 ratio: float = 0.5, mode: str = "add", seed: int = 0,
                 ratio_schedule: Mapping[int, float] | None = None, num_replicas: int = 1, rank: int = 0):
        self.batch_sampler, self.num_real = batch_sampler, num_real
        self.ratio, self.mode, self.seed = ratio, mode, seed
        self.ratio_schedule = dict(ratio_schedule or {})
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        # The synthetic picks (a walk over the shuffled pool, epoch after epoch) are MixSampler's.
        self._picks = MixSampler(num_real, synthetic_labels, ratio, mode, seed, ratio_schedule=ratio_schedule,
                                 num_replicas=num_replicas, rank=rank)

    @property
    def sampler(self) -> MixBatchSampler:
        """Lightning calls ``set_epoch`` on ``batch_sampler.sampler``: that is this object."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _real_batches(self, epoch: int) -> list[list[int]]:
        if callable(getattr(self.batch_sampler, "set_epoch", None)):
            self.batch_sampler.set_epoch(epoch)
        # the batch sampler's own sampler holds the generator, when it has one
        inner = getattr(self.batch_sampler, "sampler", self.batch_sampler)
        with seeded_rngs(inner, int(np.random.SeedSequence([self.seed, epoch, 11]).generate_state(1)[0])):
            return [[int(i) for i in batch] for batch in self.batch_sampler]

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every batch of the epoch, across all ranks."""
        epoch = self.epoch if epoch is None else epoch
        batches = self._real_batches(epoch)
        sizes = np.array([len(b) for b in batches], dtype=np.float64)
        if not len(batches):
            return []
        n_syn = synthetic_count(int(sizes.sum()), ratio_at(self.ratio, self.ratio_schedule, epoch), self.mode)[1]
        per_batch = largest_remainder(sizes / sizes.sum(), n_syn)
        picks = iter(self._picks._synthetic(epoch, n_syn, np.zeros(0, dtype=np.int64)) + self.num_real)
        rng = np.random.default_rng([self.seed, epoch, 13])
        mixed = []
        for batch, k in zip(batches, per_batch):
            synthetic = [int(next(picks)) for _ in range(int(k))]
            if self.mode == "replace":  # swap k of the batch's real samples, at random places
                batch = list(batch)
                for place, index in zip(rng.choice(len(batch), size=min(int(k), len(batch)), replace=False),
                                        synthetic):
                    batch[place] = index
                mixed.append(batch)
            else:
                joined = np.array(batch + synthetic)
                mixed.append(joined[rng.permutation(len(joined))].tolist())
        return mixed

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        per_rank = len(batches) // self.num_replicas
        return iter(batches[self.rank: per_rank * self.num_replicas: self.num_replicas])

    def __len__(self) -> int:
        return len(self.batch_sampler) // self.num_replicas
