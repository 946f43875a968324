"""torchvision projects: ``ImageFolder`` on PNG files, and uint8 channel-last NumPy images."""

import lightning as L
import numpy as np
import pytest
import torch
from conformance_projects import TupleClassifier
from conformance_testing import SOURCES, fit_one_epoch, mix
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision import transforms as T

from lightning_medaug.data import make_phantoms


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """``root/<class>/<n>.png``, 16x16 grayscale, 12 images per class."""
    root = tmp_path_factory.mktemp("imagefolder")
    images, labels, _ = make_phantoms(24, image_size=16, seed=1)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("normal", "pneumonia")[int(label)]
        folder.mkdir(exist_ok=True)
        pixels = ((image[0] + 1) * 127.5).round().byte().numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


class ImageFolderData(L.LightningDataModule):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def setup(self, stage=None):
        self.train_set = datasets.ImageFolder(self.root, transform=T.Compose([T.Grayscale(1), T.ToTensor()]))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)


@pytest.mark.parametrize("source", SOURCES)
def test_imagefolder_pngs(png_folder, source, generators, banks):
    user = ImageFolderData(png_folder)
    data = mix(user, source, "2d16", generators, banks, ratio=0.5)
    model = TupleClassifier()
    fit_one_epoch(model, data)
    assert model.seen == 2 * 24  # every real image and as many synthetic ones
    assert 0.0 <= model.value_range[0] and model.value_range[1] <= 1.0  # ToTensor's [0, 1], recognised
    real, synthetic = data.train_dataloader().dataset.datasets[0][0], data.train_dataloader().dataset[30]
    assert type(synthetic[1]) is int and type(real[1]) is int


class NumpyHWC(Dataset):
    """Images as a user keeps them after ``cv2.imread``: uint8 (H, W, C), label a Python int."""

    def __init__(self):
        images, labels, _ = make_phantoms(20, image_size=16, seed=2)
        self.images = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
        self.labels = labels.tolist()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class HWCData(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(NumpyHWC(), batch_size=5, shuffle=True)


class HWCClassifier(TupleClassifier):
    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == torch.uint8 and x.shape[1:] == (16, 16, 1)
        return super().training_step((x.permute(0, 3, 1, 2).float() / 255.0, y), batch_idx)


@pytest.mark.parametrize("source", SOURCES)
def test_uint8_channel_last_numpy(source, generators, banks):
    data = mix(HWCData(), source, "2d16", generators, banks, ratio=0.5)
    model = HWCClassifier()
    fit_one_epoch(model, data)
    assert model.seen == 40
    image, label = data.train_dataloader().dataset[25]
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (16, 16, 1)
    assert type(label) is int
