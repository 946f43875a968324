"""Patch-based training data: random patches of another data module's training samples through a
TorchIO ``Queue`` (Pérez-García et al. 2021, "TorchIO", Comput. Methods Programs Biomed.), for
images and volumes too large to train on whole.

The queue reads a few samples at a time, cuts ``samples_per_volume`` random patches from each and
shuffles patches of different samples together, so a step sees patches of several volumes while
only ``max_length`` patches are held. Samples are read through the wrapped data module's training
dataset when the queue needs them, so its training transforms stay random. Validation and test
stay whole-image (the wrapped module's own loaders). Batches keep the library's convention
(``image``, ``mask``, ``label`` and any other keys of the samples) plus TorchIO's ``location`` of
each patch. 2D images travel as one-slice volumes. TorchIO is needed: ``pip install torchio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from lightning_medaug.data.batch import IMAGE_KEY, MASK_KEY
from lightning_medaug.validation import check_at_least

__all__ = ["PatchQueueDataModule"]

_LOCATION = "location"


def _torchio() -> Any:
    try:
        import torchio
    except ImportError:
        raise ImportError("PatchQueueDataModule needs TorchIO: pip install torchio") from None
    return torchio


class PatchQueueDataModule(L.LightningDataModule):
    """Random patches of ``datamodule``'s training samples (a TorchIO ``Queue`` with a uniform sampler).

    Args:
        datamodule: the data module whose training samples are cut into patches; its validation
            and test loaders serve whole samples unchanged.
        patch_size: one side or one per spatial axis, at most the samples' size.
        samples_per_volume: patches cut from each sample read.
        max_length: patches the queue holds at once (memory: ``max_length`` patches).
        batch_size: patches per batch; ``None`` uses the wrapped module's ``batch_size``.
        num_workers: TorchIO's workers that read samples for the queue.
    """

    def __init__(self, datamodule: L.LightningDataModule, patch_size: int | Sequence[int],
                 samples_per_volume: int = 4, max_length: int = 64, batch_size: int | None = None,
                 num_workers: int = 0):
        super().__init__()
        _torchio()
        check_at_least(1, samples_per_volume=samples_per_volume, max_length=max_length, num_workers=num_workers + 1)
        if batch_size is not None:
            check_at_least(1, batch_size=batch_size)
        self.datamodule = datamodule
        self.patch_size = (patch_size,) if isinstance(patch_size, int) else tuple(int(s) for s in patch_size)
        self.samples_per_volume, self.max_length, self.num_workers = samples_per_volume, max_length, num_workers
        self.batch_size = batch_size or datamodule.hparams.get("batch_size")
        if self.batch_size is None:
            raise ValueError(f"{type(datamodule).__name__} has no batch_size: pass batch_size to PatchQueueDataModule")
        self.queue: Any = None

    # What the CLI checks against the model: the wrapped module's (whole-sample) figures.
    spatial_dims = property(lambda self: getattr(self.datamodule, "spatial_dims", None))
    image_size = property(lambda self: getattr(self.datamodule, "image_size", None))
    in_channels = property(lambda self: getattr(self.datamodule, "in_channels", None))
    num_classes = property(lambda self: getattr(self.datamodule, "num_classes", None))

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.datamodule.setup(stage)
        if stage not in (None, "fit") or self.queue is not None:
            return
        tio = _torchio()
        dataset = self.datamodule.train_dataloader().dataset
        image = dataset[0][IMAGE_KEY]
        dims = image.ndim - 1
        patch = self.patch_size * dims if len(self.patch_size) == 1 else self.patch_size
        if len(patch) != dims or any(p > s for p, s in zip(patch, image.shape[1:])):
            raise ValueError(f"patch_size {self.patch_size} must have 1 or {dims} sides, each at most the samples' "
                             f"size {tuple(image.shape[1:])}")
        self.spatial_patch = patch
        self.queue = tio.Queue(_SampleSubjects(dataset, dims), max_length=self.max_length,
                               samples_per_volume=self.samples_per_volume,
                               sampler=tio.UniformSampler(patch + (1,) * (3 - dims)), num_workers=self.num_workers,
                               shuffle_subjects=True, shuffle_patches=True)

    def train_dataloader(self) -> DataLoader:
        if self.queue is None:
            self.setup("fit")
        # the queue does the reading (and its workers); the loader only batches its patches
        return DataLoader(self.queue, batch_size=self.batch_size, num_workers=0,
                          collate_fn=_PatchCollate(len(self.spatial_patch)))

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()


class _SampleSubjects(Dataset):
    """The samples of ``dataset`` as TorchIO subjects, built when read (not all at once, as
    ``tio.SubjectsDataset`` would from a list)."""

    def __init__(self, dataset: Dataset, spatial_dims: int):
        self.dataset, self.spatial_dims = dataset, spatial_dims

    def __len__(self) -> int:
        return len(self.dataset)

    def dry_iter(self) -> list[None]:
        """What ``tio.Queue`` counts patches over without reading: no sample sets its own count, so
        placeholders do (each gives ``samples_per_volume`` patches)."""
        return [None] * len(self)

    def __getitem__(self, index: int) -> Any:
        tio = _torchio()
        sample = self.dataset[int(index)]
        if not isinstance(sample, dict) or IMAGE_KEY not in sample:
            raise ValueError(f"PatchQueueDataModule needs samples as dicts with an {IMAGE_KEY!r} entry, "
                             f"got {type(sample).__name__}")
        pad = (1,) * (3 - self.spatial_dims)  # 2D images as one-slice volumes
        fields = {}
        for key, value in sample.items():
            if key in (IMAGE_KEY, MASK_KEY):
                kind = tio.ScalarImage if key == IMAGE_KEY else tio.LabelMap
                value = kind(tensor=torch.as_tensor(value).reshape(*value.shape, *pad))
            fields[key] = value
        return tio.Subject(**fields)


class _PatchCollate:
    """Patches (TorchIO subjects) -> one batch in the library's convention."""

    def __init__(self, spatial_dims: int):
        self.spatial_dims = spatial_dims

    def __call__(self, patches: list[Any]) -> dict[str, Any]:
        rows = []
        for patch in patches:
            row = {}
            for key, value in patch.items():
                data = getattr(value, "data", None)
                if isinstance(data, torch.Tensor) and key != _LOCATION:  # an image or a mask
                    value = data.reshape(data.shape[: self.spatial_dims + 1]).float()
                row[key] = value
            rows.append(row)
        return default_collate(rows)
