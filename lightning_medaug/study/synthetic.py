"""What a study needs around a trained generator: the subset's labels and masks, bank sizes, new
mask layouts for mask-conditional generators, and real-vs-synthetic sample grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_medaug.data.batch import unpack_batch

__all__ = ["bank_size", "mask_layouts", "sample_grids", "train_labels", "train_masks"]


def train_labels(datamodule: Any) -> list[int] | None:
    """Class labels of the training split, or ``None`` for data without labels."""
    data = datamodule.train_dataset
    labels = getattr(data, "labels", None)
    if labels is not None:
        return [int(v) for v in torch.as_tensor(labels).flatten().tolist()]
    first = unpack_batch(data[0]).label if len(data) else None
    if first is None:
        return None
    return [int(unpack_batch(data[i]).label) for i in range(len(data))]


def train_masks(datamodule: Any) -> Tensor | None:
    """The training split's masks as a float (N, 1, *S) {0, 1} tensor, or ``None`` without masks."""
    data = datamodule.train_dataset
    masks = [unpack_batch(data[i]).mask for i in range(len(data))]
    return None if not masks or masks[0] is None else torch.stack(masks).float()


def bank_size(num_real: int, ratios: Sequence[float], synthetic_only: bool, factor: float) -> int:
    """Samples a bank needs: one epoch's synthetic share at the largest ``add`` ratio (or one epoch
    of synthetic-only training), times ``factor``."""
    need = max((math.ceil(num_real * r / (1 - r)) for r in ratios), default=0)
    return math.ceil(max(need, num_real if synthetic_only else 0) * factor)


def mask_layouts(masks: Tensor, n: int, seed: int) -> Tensor:
    """``n`` masks made from ``masks`` (N, 1, *S) by seeded flips along every spatial axis and 90-degree
    turns in the first two spatial axes: layouts the segmenter has not seen as such, from anatomy
    it has (no mask of another patient enters). Returns uint8 {0, 1}."""
    generator = torch.Generator().manual_seed(seed)
    dims = masks.ndim - 2
    out = []
    for _ in range(n):
        mask = masks[int(torch.randint(len(masks), (), generator=generator))]
        for axis in range(1, dims + 1):
            if torch.rand((), generator=generator) < 0.5:
                mask = mask.flip(axis)
        if mask.shape[1] == mask.shape[2]:  # square in the plane: a quarter turn keeps the shape
            mask = torch.rot90(mask, int(torch.randint(4, (), generator=generator)), dims=(1, 2))
        out.append(mask)
    return torch.stack(out).round().to(torch.uint8)


def sample_grids(generator: Any, real: Any, folder: Path, name: str, masks: Tensor | None = None,
                 per_class: int = 8, sample_kwargs: dict[str, Any] | None = None) -> None:
    """``real.png`` and ``samples.png`` in ``folder``: one row per class, real images from the
    generator's training subset beside seeded samples drawn with the bank's ``sample_kwargs`` (for
    mask-conditional generators, rendered from the same real masks; 3D volumes as middle slices)."""
    from lightning_medaug.rendering import save_image_grid

    data = real.train_dataset
    labels = train_labels(real)
    classes = sorted(set(labels)) if generator.num_classes and labels else [None]
    rows = []
    for c in classes:
        members = [i for i in range(len(data)) if c is None or labels[i] == c][:per_class]
        rows.append(members)
    picked = [i for row in rows for i in row]
    real_images = torch.stack([unpack_batch(data[i]).image for i in picked])
    wanted = torch.tensor([labels[i] for i in picked]) if classes != [None] else None
    cond = masks[picked] if masks is not None else None
    fake = generator.sample(len(picked), labels=wanted, masks=cond, generator=torch.Generator().manual_seed(0),
                            **(sample_kwargs or {}))
    nrow = max(len(row) for row in rows)
    scale = max(1, round(84 / real_images.shape[-1]))  # small images enlarged to be seen
    save_image_grid(real_images, folder / "real.png", nrow=nrow, title="real (training subset)", scale=scale)
    save_image_grid(fake.float().cpu(), folder / "samples.png", nrow=nrow, title=f"synthetic ({name})",
                    scale=scale)
