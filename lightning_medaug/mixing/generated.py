"""Synthetic samples drawn from a generator at training time, kept in memory for one epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.bank.plan import largest_remainder
from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY

__all__ = ["GeneratedPool", "generate_pool", "model_image_shape"]


class GeneratedPool(Dataset):
    """Images (and labels / masks) already sampled, with the reading API of ``SyntheticBank``."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, masks: Tensor | None = None,
                 num_classes: int = 0):
        if images.ndim not in (4, 5) or images.shape[0] == 0:
            raise ValueError(f"expected a non-empty (N, C, *spatial) batch of images, got shape {tuple(images.shape)}")
        self.images = images.detach().float().cpu()
        self.label_tensor = None if labels is None else labels.detach().long().cpu()
        self.masks = None if masks is None else masks.detach().float().cpu()
        self.num_classes = num_classes

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def labels(self) -> np.ndarray:
        if self.label_tensor is None:
            return np.zeros(len(self), dtype=np.int64)
        return self.label_tensor.numpy()

    @property
    def has_labels(self) -> bool:
        return self.label_tensor is not None

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self._select(index)

    def read(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """Many samples at once, stacked (the batched counterpart of ``__getitem__``)."""
        return self._select(torch.as_tensor(indices, dtype=torch.int64))

    def _select(self, index: int | Tensor) -> dict[str, Tensor]:
        """Each stored field at ``index``: one sample for an int, a stacked batch for an index tensor."""
        item = {IMAGE_KEY: self.images[index]}
        if self.label_tensor is not None:
            item[LABEL_KEY] = self.label_tensor[index]
        if self.masks is not None:
            item[MASK_KEY] = self.masks[index]
        return item


@torch.inference_mode()
def generate_pool(model: Any, num_samples: int, seed: int, batch_size: int = 256,
                  class_weights: Sequence[float] | None = None, masks: Tensor | None = None,
                  sample_kwargs: Mapping[str, Any] | None = None) -> GeneratedPool:
    """Sample ``num_samples`` images from ``model`` (a ``GenerativeModule``) on its own device.

    Labels follow ``class_weights`` (largest-remainder counts, default uniform) and are shuffled
    with ``seed``; ``masks`` (cycled) condition mask-conditional models.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    rng = np.random.default_rng(seed)
    labels = None
    if num_classes:
        weights = np.asarray(class_weights if class_weights is not None else [1.0] * num_classes, dtype=np.float64)
        if weights.shape != (num_classes,) or (weights < 0).any() or weights.sum() == 0:
            raise ValueError(f"class_weights must be {num_classes} non-negative numbers, got {list(weights)}")
        counts = largest_remainder(weights / weights.sum(), num_samples)
        labels = torch.from_numpy(rng.permutation(np.repeat(np.arange(num_classes), counts)))
    if getattr(model, "requires_masks", False) and masks is None:
        raise ValueError(f"{type(model).__name__} is mask-conditional: pass masks to generate from")
    device = getattr(model, "device", torch.device("cpu"))
    gen = torch.Generator(device=device).manual_seed(int(seed))
    was_training = model.training
    model.eval()
    chunks: list[Tensor] = []
    used_masks: list[Tensor] = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        batch_labels = None if labels is None else labels[start:start + n].to(device)
        batch_masks = None
        if masks is not None:
            batch_masks = masks[torch.arange(start, start + n) % masks.shape[0]].to(device)
            used_masks.append(batch_masks.cpu())
        chunks.append(model.sample(n, labels=batch_labels, masks=batch_masks, generator=gen,
                                   **dict(sample_kwargs or {})).cpu())
    model.train(was_training)
    return GeneratedPool(torch.cat(chunks), labels, torch.cat(used_masks) if used_masks else None, num_classes)


def model_image_shape(model: Any) -> tuple[int, ...]:
    """``(C, *spatial)`` of a generator's samples, from its recorded hyperparameters."""
    hp = model.hparams
    size = hp["image_size"]
    spatial = tuple(size) if isinstance(size, (list, tuple)) else (int(size),) * int(hp["spatial_dims"])
    return (int(hp["in_channels"]), *spatial)
