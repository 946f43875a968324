"""Unpaired two-domain data for CycleGAN: batches ``{"image_a": ..., "image_b": ...}``.

:class:`UnpairedDataset` joins any two datasets of the library's sample layout (dicts with an
``"image"`` entry, or ``(image, ...)`` tuples); :class:`PhantomDomainsDataModule` builds one from
the procedural phantoms in their two contrasts (``"mr"`` and ``"ct"``), with different seeds so
no A image has its B counterpart: the pairs are truly unpaired.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.data.phantom import PhantomDataset
from lightning_medaug.data.split_module import SplitDataModule

__all__ = ["IMAGE_A_KEY", "IMAGE_B_KEY", "PhantomDomainsDataModule", "UnpairedDataset"]

IMAGE_A_KEY = "image_a"
IMAGE_B_KEY = "image_b"


class UnpairedDataset(Dataset):
    """Item ``i`` of domain A with a partner from domain B, as ``{"image_a", "image_b"}``.

    With ``random_partner=True`` (training) the B item is drawn afresh at every access, as in
    Zhu et al. 2017's unaligned loader, so A/B pairings change between epochs; otherwise it is
    item ``i mod len(B)`` (validation: the same pairs every time). Length is ``len(A)``.
    """

    def __init__(self, dataset_a: Dataset, dataset_b: Dataset, random_partner: bool = True):
        if len(dataset_a) == 0 or len(dataset_b) == 0:  # type: ignore[arg-type]
            raise ValueError("both domains need at least one sample")
        self.dataset_a, self.dataset_b, self.random_partner = dataset_a, dataset_b, random_partner

    def __len__(self) -> int:
        return len(self.dataset_a)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        size_b = len(self.dataset_b)  # type: ignore[arg-type]
        partner = int(torch.randint(size_b, ())) if self.random_partner else index % size_b
        return {IMAGE_A_KEY: unpack_batch(self.dataset_a[index]).image,
                IMAGE_B_KEY: unpack_batch(self.dataset_b[partner]).image}


class PhantomDomainsDataModule(SplitDataModule):
    """Phantoms in two contrasts as unpaired domains A and B, 2D or 3D; needs no files.

    Args:
        spatial_dims: 2 or 3.
        image_size: side length of every spatial axis, or one per axis.
        num_train, num_val: samples per domain in each split.
        batch_size, num_workers: loader settings.
        seed: base seed; domain B and the validation split use seeds of their own.
        style_a, style_b: phantom contrasts of the two domains (``"mr"`` / ``"ct"``).
    """

    def __init__(self, spatial_dims: int = 2, image_size: int | tuple[int, ...] = 32, num_train: int = 256,
                 num_val: int = 32,
                 batch_size: int = 16, num_workers: int = 0, seed: int = 0, style_a: str = "mr", style_b: str = "ct"):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train and num_val must be at least 1, got {num_train} and {num_val}")
        if style_a == style_b:
            raise ValueError(f"style_a and style_b are both {style_a!r}: pick two different contrasts ('mr', 'ct')")
        self.save_hyperparameters()
        self.spatial_dims, self.image_size, self.in_channels = spatial_dims, image_size, 1
        self._domain(1, 0, style_a)  # validates spatial_dims, image_size and styles now, not at fit time

    def _domain(self, num_samples: int, seed: int, style: str) -> PhantomDataset:
        hp = self.hparams
        return PhantomDataset(num_samples, hp.spatial_dims, hp.image_size, num_classes=2, seed=seed, style=style)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for offset, split in enumerate(("train", "val")):
            if split not in self.datasets:
                base = hp.seed * 1000 + 10 * offset
                count = hp[f"num_{split}"]
                self.datasets[split] = UnpairedDataset(self._domain(count, base, hp.style_a),
                                                       self._domain(count, base + 5, hp.style_b),
                                                       random_partner=split == "train")
