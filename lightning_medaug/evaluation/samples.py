"""Samples read from a data set into tensors, seeded subsets, and the pictures drawn from them."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.rendering.grid import save_image_grid

__all__ = ["Samples", "load_samples", "mask_pairs", "sample_indices", "save_paired_examples",
           "save_real_vs_synthetic"]

_CAPTION_WIDTH = 48  # tile pixels a caption like "syn 1" needs


@dataclass
class Samples:
    """Images ``(N, C, *S)``, labels ``(N,)`` and masks ``(N, 1, *S)`` (``None`` when absent) and
    the indices in the source data set they were read from."""

    images: Tensor
    labels: Tensor | None
    masks: Tensor | None
    indices: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def sample_indices(total: int, num_samples: int | None, seed: int) -> Tensor:
    """Sorted indices of a seeded random subset of ``num_samples`` out of ``total`` (all when ``None``)."""
    if num_samples is None or num_samples >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num_samples].sort().values


def load_samples(dataset: Dataset, num_samples: int | None = None, seed: int = 0) -> Samples:
    """Read a seeded subset of a map-style data set of samples (dicts, tuples or tensors).

    Labels are kept when every sample has exactly one (multi-label vectors are not classes),
    masks when every sample has one.
    """
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise ValueError("the data set is empty")
    indices = sample_indices(total, num_samples, seed)
    images, labels, masks = [], [], []
    for index in indices.tolist():
        batch = unpack_batch(dataset[index])
        images.append(torch.as_tensor(batch.image).float())
        labels.append(batch.label if batch.label is not None and batch.label.numel() == 1 else None)
        masks.append(batch.mask)
    return Samples(torch.stack(images),
                   None if any(x is None for x in labels) else torch.cat(labels).long(),
                   None if any(m is None for m in masks) else torch.stack([torch.as_tensor(m).float() for m in masks]),
                   indices)


def _mask_key(mask: Tensor) -> str:
    binary = (mask > 0.5).to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(binary.numpy().tobytes()).hexdigest()


def mask_pairs(synthetic_masks: Tensor, real_masks: Tensor) -> tuple[list[int], list[int]]:
    """``(synthetic_rows, real_rows)`` of samples drawn from the very same mask.

    A synthetic sample is paired with the real sample whose mask is identical; masks that are
    empty or shared by several real samples are skipped, since the pair would be ambiguous.
    """
    keys = [_mask_key(m) for m in real_masks]
    counts = Counter(keys)
    unique = {key: row for row, (key, mask) in enumerate(zip(keys, real_masks))
              if counts[key] == 1 and bool(mask.any())}
    pairs = [(row, unique[key]) for row, key in enumerate(_mask_key(m) for m in synthetic_masks) if key in unique]
    return [s for s, _ in pairs], [r for _, r in pairs]


def _scale(images: Tensor) -> int:
    width = images.shape[-1] * (3 if images.ndim == 5 else 1)  # 3D tiles show three planes
    return max(1, -(-_CAPTION_WIDTH // width))


def save_real_vs_synthetic(real: Samples, synthetic: Samples, path: str | Path, per_class: int = 6) -> Path:
    """One row per class: ``per_class`` real images, then ``per_class`` synthetic ones (one row for
    unlabelled samples). Missing tiles are left black."""
    classes: list[int | None] = [None]
    if synthetic.labels is not None and real.labels is not None:
        classes = sorted(set(synthetic.labels.tolist()))
    blank = torch.full_like(synthetic.images[0], -1.0)
    tiles, captions = [], []
    for c in classes:
        for name, samples in (("real", real), ("syn", synthetic)):
            rows = range(len(samples)) if c is None else (samples.labels == c).nonzero().flatten().tolist()
            rows = list(rows)[:per_class]
            tiles += [samples.images[r] for r in rows] + [blank] * (per_class - len(rows))
            tag = name if c is None else f"{name} {c}"
            captions += [tag] * len(rows) + [""] * (per_class - len(rows))
    images = torch.stack(tiles)
    return save_image_grid(images, path, nrow=2 * per_class, labels=captions, scale=_scale(images),
                           title="real training images (left) | synthetic (right), one row per class")


def save_paired_examples(real: Tensor, synthetic: Tensor, path: str | Path, max_pairs: int = 8) -> Path:
    """``(real, synthetic)`` pairs drawn from the same masks, side by side."""
    n = min(max_pairs, real.shape[0])
    tiles = torch.stack([t for i in range(n) for t in (real[i], synthetic[i])])
    captions = [tag for i in range(n) for tag in (f"real {i}", f"syn {i}")]
    return save_image_grid(tiles, path, nrow=min(8, 2 * n), labels=captions, scale=_scale(tiles),
                           title="same mask: real image | synthetic image")
