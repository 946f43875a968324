"""The sample and batch convention shared by every data module, generator and task.

Our own data modules yield dictionaries, like MONAI's dictionary transforms::

    {"image": float32 (C, *spatial) in [-1, 1],
     "label": int64 scalar (class index),            # when the data set has classes
     "mask":  float32 (1, *spatial) in {0, 1}}       # when the data set has masks

``spatial`` is (H, W) for 2D and (D, H, W) for 3D. Users' own modules may yield tuples
``(image, label)`` / ``(image, mask)`` or other dictionaries; :func:`unpack_batch` reads all of
them so generators and tasks accept any of these layouts unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

IMAGE_KEY = "image"
LABEL_KEY = "label"
MASK_KEY = "mask"

#: Value range of images everywhere in the library (data modules, generators, banks).
IMAGE_RANGE: tuple[float, float] = (-1.0, 1.0)

__all__ = ["IMAGE_KEY", "LABEL_KEY", "MASK_KEY", "IMAGE_RANGE", "Batch", "unpack_batch", "to_unit_range",
           "from_unit_range"]


class Batch(NamedTuple):
    """A batch split into its parts; ``label`` and ``mask`` are ``None`` when absent."""

    image: Tensor
    label: Tensor | None
    mask: Tensor | None


def unpack_batch(batch: Any, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY, mask_key: str = MASK_KEY) -> Batch:
    """Split a dict or tuple batch into ``Batch(image, label, mask)``.

    A tuple's second element is read as a label when it is integer-typed with one value per
    sample, and as a mask when it has the image's spatial shape.
    """
    if isinstance(batch, Mapping):
        if image_key not in batch:
            raise ValueError(f"batch has no {image_key!r} entry (keys: {sorted(batch)})")
        label = batch.get(label_key)
        if label is not None:
            label = torch.as_tensor(label).reshape(-1).long()
        return Batch(batch[image_key], label, batch.get(mask_key))
    if isinstance(batch, Tensor):
        return Batch(batch, None, None)
    if isinstance(batch, Sequence) and len(batch) >= 1:
        image, label, mask = batch[0], None, None
        for extra in batch[1:3]:
            extra = torch.as_tensor(extra)
            if extra.ndim >= 2 and extra.shape[-1] == image.shape[-1] and extra.ndim == image.ndim:
                mask = extra
            else:
                label = extra.reshape(-1).long()
        return Batch(image, label, mask)
    raise ValueError(f"cannot read a batch of type {type(batch).__name__}: expected a dict, tuple or tensor")


def to_unit_range(x: Tensor) -> Tensor:
    """Map images from [-1, 1] to [0, 1] (for metrics and pictures)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def from_unit_range(x: Tensor) -> Tensor:
    """Map images from [0, 1] to [-1, 1]."""
    return x * 2.0 - 1.0
