"""``SplitDataModule``: the loader plumbing shared by data modules that hold one Dataset per split.

Subclasses fill ``self.datasets`` ("train", "val", "test", ...) and may override
:meth:`_dataset` to load splits lazily; everything else (the four loaders, ``*_dataset``
properties, ``splits``) is here once. ``predict_dataloader`` serves the test split, so
``medaug predict`` runs on held-out images by default.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["SplitDataModule"]


class SplitDataModule(L.LightningDataModule):
    """Base of data modules with a ``datasets`` dict; subclasses set ``batch_size``/``num_workers`` hparams."""

    #: pin loader memory; ``None`` pins when CUDA is available (host-to-GPU copies overlap compute).
    pin_memory: bool | None = None

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def _dataset(self, split: str) -> Dataset:
        """The Dataset of ``split``, built on first use."""
        self.setup()
        if split not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {split!r} split; it has {sorted(self.datasets)}")
        return self.datasets[split]

    @property
    def train_dataset(self) -> Dataset:
        return self._dataset("train")

    @property
    def val_dataset(self) -> Dataset:
        return self._dataset("val")

    @property
    def test_dataset(self) -> Dataset:
        return self._dataset("test")

    @property
    def splits(self) -> dict[str, int]:
        """Number of samples of each loaded split (after subsetting)."""
        return {split: len(ds) for split, ds in self.datasets.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        # Evaluation loaders draw their worker seed from their own generator, not the global stream:
        # a resumed run skips the validation after its checkpoint and must not fall out of step.
        return DataLoader(self._dataset(split), batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                          generator=None if shuffle else torch.Generator())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
