"""MONAI projects: dict samples under the project's own keys, dict transforms, MONAI's collate."""

import lightning as L
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conformance_projects import DictClassifier
from conformance_testing import SOURCES, fit_one_epoch, mix
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor, PersistentDataset, list_data_collate
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandFlipd,
    RandRotate90d,
    ScaleIntensityd,
)

from lightning_medaug.data import make_phantoms


@pytest.fixture(scope="module")
def nifti_files(tmp_path_factory):
    """16x16 NIfTI images written with SimpleITK (1 mm spacing), as a MONAI data list."""
    root = tmp_path_factory.mktemp("nifti")
    images, labels, _ = make_phantoms(20, image_size=16, seed=6)
    items = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / f"case{i:02d}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray((image[0].numpy() * 500 + 500).astype(np.int16)), str(path))
        items.append({"img": str(path), "y": int(label)})
    return items


def _load_and_augment():
    return Compose([LoadImaged(keys="img"), EnsureChannelFirstd(keys="img"), ScaleIntensityd(keys="img"),
                    RandFlipd(keys="img", prob=0.5, spatial_axis=0), RandRotate90d(keys="img", prob=0.5)])


class FileData(L.LightningDataModule):
    def __init__(self, items, kind, cache_dir=None):
        super().__init__()
        self.items, self.kind, self.cache_dir = items, kind, cache_dir

    def setup(self, stage=None):
        if self.kind == "cache":
            self.train_set = CacheDataset(self.items, transform=_load_and_augment(), cache_rate=1.0, progress=False)
        else:
            self.train_set = PersistentDataset(self.items, transform=_load_and_augment(), cache_dir=self.cache_dir)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True, collate_fn=list_data_collate)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("kind", ["cache", "persistent"])
def test_cached_file_datasets(nifti_files, kind, source, generators, banks, tmp_path):
    data = mix(FileData(nifti_files, kind, tmp_path / "cache"), source, "2d16", generators, banks, ratio=0.5,
               image_key="img", label_key="y")
    model = DictClassifier(image_key="img", label_key="y")
    fit_one_epoch(model, data)
    assert model.seen == 40
    assert 0.0 <= model.value_range[0] and model.value_range[1] <= 1.0  # ScaleIntensityd's [0, 1]
    synthetic = data.train_dataloader().dataset[30]
    assert isinstance(synthetic["img"], MetaTensor) and type(synthetic["y"]) is int


class ArrayData(L.LightningDataModule):
    """The issue's example: arrays in memory, keys ``img``/``y``, a random flip as the dataset transform."""

    def setup(self, stage=None):
        images, labels, _ = make_phantoms(20, image_size=16, seed=7)
        items = [{"img": image.numpy(), "y": int(label)} for image, label in zip(images, labels)]
        self.train_set = Dataset(items, transform=Compose([EnsureTyped(keys="img", track_meta=False),
                                                           RandFlipd(keys="img", prob=1.0, spatial_axis=1)]))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)


@pytest.mark.parametrize("source", SOURCES)
def test_dict_transform_runs_on_synthetic_samples_in_the_users_keys(source, generators, banks):
    data = mix(ArrayData(), source, "2d16", generators, banks, ratio=0.5, image_key="img", label_key="y")
    model = DictClassifier(image_key="img", label_key="y")
    fit_one_epoch(model, data)
    assert model.seen == 40
    mixed = data.train_dataloader().dataset
    adapter = mixed.synthetic
    item = adapter.source[3]
    plain = adapter.template.build(item["image"], item["label"], None)
    assert torch.equal(mixed[20 + 3]["img"], torch.flip(plain["img"], dims=[-1]))  # the flip ran (prob 1)
    assert set(mixed[20 + 3]) == {"img", "y"}
