"""Logging a generator's loss terms without paying Lightning's per-call cost on every batch.

``LightningModule.log`` costs host time on every call: on an H100 machine, the cVAE's three calls
per batch made a Lightning epoch 1.4x as long as a plain loop; without them, Lightning matched
the plain loop (``benchmarks/train_overhead.py``). A small model's whole step takes less. So
training terms are summed on the device every batch, with no host sync, and reach ``self.log``
only on the batches the loggers write and once per epoch. What users see is what ``self.log(...,
on_step=True, on_epoch=True)`` shows: ``train/<name>_step``, ``train/<name>_epoch`` and
``train/<name>`` (the epoch mean, for callbacks and checkpoint monitors).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor

__all__ = ["TermAccumulator", "logs_this_batch"]


class TermAccumulator:
    """Batch-size-weighted running sums of named scalar tensors, kept on their device."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.sums: Tensor | None = None
        self.count = 0

    def add(self, terms: Mapping[str, Tensor], batch_size: int) -> None:
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        if tuple(terms) != self.names or self.sums is None or self.sums.device != values.device:
            self.names, self.sums, self.count = tuple(terms), torch.zeros_like(values), 0
        self.sums.add_(values, alpha=batch_size)
        self.count += batch_size

    def means(self) -> dict[str, Tensor]:
        """The weighted mean of each term since the last :meth:`reset` (empty if none was added)."""
        if self.sums is None or self.count == 0:
            return {}
        return dict(zip(self.names, self.sums / self.count))

    def reset(self) -> None:
        self.names, self.sums, self.count = (), None, 0


def logs_this_batch(trainer: L.Trainer) -> bool:
    """Whether the loggers write step metrics after the current training batch (Lightning writes
    them when its count of stepped batches, raised after this batch, is a multiple of
    ``log_every_n_steps``)."""
    every = trainer.log_every_n_steps
    if trainer.fast_dev_run:
        return True
    if not every:
        return False
    stepped = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
    return (stepped + 1) % every == 0
