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

from lightning_medaug.compat import batches_that_stepped

__all__ = ["TermAccumulator", "logs_this_batch"]


class TermAccumulator:
    """Batch-size-weighted running sums of named scalars, kept on their device.

    Batches may log different sets of terms (a GAN's generator loss only every ``n_critic``
    batches): each set is summed as one stacked tensor, one add per batch, and each term's mean
    is taken over the batches that logged it.
    """

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], list] = {}  # names -> [sums (stacked), number of samples]

    def add(self, terms: Mapping[str, Tensor | float], batch_size: int, device: torch.device | None = None) -> None:
        values = torch.stack([torch.as_tensor(value, device=device).detach().float().reshape(())
                              for value in terms.values()])
        group = self.groups.get(tuple(terms))
        if group is None or group[0].device != values.device:
            group = self.groups[tuple(terms)] = [torch.zeros_like(values), 0]
        group[0].add_(values, alpha=batch_size)
        group[1] += batch_size

    def means(self) -> dict[str, Tensor]:
        """The weighted mean of each term since the last :meth:`reset` (empty if none was added)."""
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for names, (stacked, count) in self.groups.items():
            for name, value in zip(names, stacked):
                sums[name] = sums[name] + value if name in sums else value
                counts[name] = counts.get(name, 0) + count
        return {name: sums[name] / counts[name] for name in sums if counts[name]}

    def reset(self) -> None:
        self.groups = {}


def logs_this_batch(trainer: L.Trainer) -> bool:
    """Whether the loggers write step metrics after the current training batch (Lightning writes
    them when its count of stepped batches, raised after this batch, is a multiple of
    ``log_every_n_steps``)."""
    every = trainer.log_every_n_steps
    if trainer.fast_dev_run:
        return True
    if not every:
        return False
    return (batches_that_stepped(trainer) + 1) % every == 0
