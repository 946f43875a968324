"""What the wrapped module's real training loader holds: its sampling rule, labels, masks, batch size."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from lightning_medaug.mixing.structure import SampleStructure

__all__ = ["user_sampler", "user_batch_sampler", "labels_of", "masks_of", "probe_indices", "batch_size_holders"]


def user_sampler(loader: DataLoader) -> Any:
    """The loader's sampler when it chooses real samples by a rule of its own, else None.

    A plain shuffle over every sample (``shuffle=True``, a ``DistributedSampler``) or no shuffle
    needs no honouring: the mix shuffles all real samples itself. Anything else (weighted,
    with replacement, a subset, a sampler of the user's) decides which real samples an epoch
    sees, and is kept.
    """
    sampler = loader.sampler
    if isinstance(sampler, SequentialSampler) or type(sampler) is DistributedSampler:
        return None
    if type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(sampler.data_source):
        return None
    return sampler


def user_batch_sampler(loader: DataLoader) -> Any:
    """The loader's batch sampler when it is the user's own (not torch's ``BatchSampler``), else None."""
    batch_sampler = loader.batch_sampler
    return None if batch_sampler is None or type(batch_sampler) is BatchSampler else batch_sampler


def probe_indices(size: int, count: int = 8) -> list[int]:
    """A few indices spread over a data set, to read real samples from at set-up."""
    return sorted({int(i) for i in np.linspace(0, size - 1, num=min(count, size))})


def labels_of(dataset: Dataset, structure: SampleStructure) -> np.ndarray:
    """Class indices of a real data set: its ``labels`` attribute when it has one, else read sample by sample."""
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == len(dataset):
        return np.asarray(labels).reshape(len(dataset), -1)[:, 0].astype(np.int64)
    if not structure.has_label:
        raise ValueError("class_balance needs labelled real samples")

    def index(label: torch.Tensor) -> int:  # a class index, or the class of a one-hot vector
        flat = label.reshape(-1)
        return int(flat.argmax()) if flat.numel() > 1 else int(flat[0])

    return np.array([index(structure.get(dataset[i], "label")) for i in range(len(dataset))])


def masks_of(dataset: Dataset, structure: SampleStructure) -> torch.Tensor:
    """Every real mask as a float ``(N, 1, *spatial)`` batch, to condition a mask-conditional generator."""
    if not structure.has_mask:
        raise ValueError("the generator is mask-conditional but the real samples carry no masks to condition on: "
                         "write a bank from it with masks (`medaug generate --masks <folder>`) and pass bank=")
    leaf = structure.roles["mask"]
    masks = []
    for i in range(len(dataset)):
        mask = structure.get(dataset[i], "mask").float()
        if leaf.layout == "channel_last":
            mask = mask.movedim(-1, 0)
        elif leaf.layout == "no_channel":
            mask = mask.unsqueeze(0)
        masks.append(mask)
    return torch.stack(masks)


def batch_size_holders(datamodule: L.LightningDataModule) -> list[Any]:
    """Where ``datamodule`` keeps its batch size: itself and/or its hparams, as Lightning looks.

    Raises ``AttributeError`` when it keeps none, so ``hasattr`` on the mixer is then False, as for
    any module without a batch size.
    """
    holders: list[Any] = [datamodule] if hasattr(datamodule, "batch_size") else []
    if "batch_size" in getattr(datamodule, "hparams", {}):
        holders.append(datamodule.hparams)
    if not holders:
        raise AttributeError(f"{type(datamodule).__name__} keeps no batch_size attribute or hyperparameter")
    return holders
