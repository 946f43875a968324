"""Projects on the official ``medmnist`` package's datasets: labels are NumPy arrays of shape (1,)."""

import lightning as L
import medmnist
import numpy as np
import pytest
import torch
from conformance_projects import TupleClassifier
from conformance_testing import SOURCES, fit_one_epoch, mix
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

from lightning_medaug.data import make_phantoms
from lightning_medaug.data.medmnist import shipped_datasets_dir


class PneumoniaData(L.LightningDataModule):
    """As the MedMNIST getting-started notebook writes it, on the first 40 training images."""

    def setup(self, stage=None):
        transform = T.Compose([T.ToTensor(), T.Normalize(mean=[0.5], std=[0.5])])
        full = medmnist.PneumoniaMNIST(split="train", root=str(shipped_datasets_dir()), transform=transform)
        self.train_set = Subset(full, range(40))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=16, shuffle=True)


@pytest.mark.parametrize("source", SOURCES)
def test_medmnist_2d(source, generators, banks):
    data = mix(PneumoniaData(), source, "2d28", generators, banks, ratio=0.5)
    model = TupleClassifier()
    fit_one_epoch(model, data)
    assert model.seen == 80
    assert -1.0 <= model.value_range[0] and model.value_range[1] <= 1.0
    image, label = data.train_dataloader().dataset[50]
    assert isinstance(label, np.ndarray) and label.shape == (1,) and label.dtype == np.int64
    assert isinstance(image, torch.Tensor) and image.shape == (1, 28, 28)


@pytest.fixture(scope="module")
def nodule_root(tmp_path_factory):
    """``nodulemnist3d.npz`` in the official layout and sizes (uint8 28^3 volumes, (N, 1) labels): the
    package checks the split sizes; the first 12 training volumes are phantoms, the rest blank."""
    root = tmp_path_factory.mktemp("medmnist3d")
    sizes = medmnist.INFO["nodulemnist3d"]["n_samples"]
    arrays = {}
    for split, n in sizes.items():
        volumes = np.zeros((n, 28, 28, 28), dtype=np.uint8)
        images, labels, _ = make_phantoms(12, spatial_dims=3, image_size=28, seed=len(split))
        volumes[:12] = ((images[:, 0] + 1) * 127.5).round().byte().numpy()
        arrays[f"{split}_images"] = volumes
        arrays[f"{split}_labels"] = np.resize(labels.numpy(), n).reshape(-1, 1)
    np.savez(root / "nodulemnist3d.npz", **arrays)
    return root


class NoduleData(L.LightningDataModule):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def setup(self, stage=None):
        self.train_set = Subset(medmnist.NoduleMNIST3D(split="train", root=str(self.root)), range(12))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=4, shuffle=True)


@pytest.mark.parametrize("source", SOURCES)
def test_medmnist_3d(nodule_root, source, generators, banks):
    data = mix(NoduleData(nodule_root), source, "3d28", generators, banks, ratio=0.5)
    model = TupleClassifier(spatial_dims=3)
    fit_one_epoch(model, data)
    assert model.seen == 24
    image, label = data.train_dataloader().dataset[20]
    assert isinstance(image, np.ndarray) and image.dtype == np.float64 and image.shape == (1, 28, 28, 28)
    assert 0.0 <= image.min() and image.max() <= 1.0  # the package's [0, 1] volumes, recognised
    assert isinstance(label, np.ndarray) and label.shape == (1,)
