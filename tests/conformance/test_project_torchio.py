"""A TorchIO project: 3D subjects, a patch ``Queue`` and TorchIO's own loader and collate."""

import lightning as L
import pytest
import torch
import torchio as tio
from conformance_projects import CountingModule
from conformance_testing import SOURCES, fit_one_epoch, mix
from torch.nn import functional as F

from lightning_medaug.data import make_phantoms


class PatchData(L.LightningDataModule):
    """Six 16^3 subjects, eight random 8^3 patches from each, anisotropic 2 x 1 x 1 mm voxels."""

    def setup(self, stage=None):
        images, labels, _ = make_phantoms(6, spatial_dims=3, image_size=16, seed=8)
        affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])).numpy()
        subjects = [tio.Subject(t1=tio.ScalarImage(tensor=image, affine=affine), label=int(label))
                    for image, label in zip(images, labels)]
        dataset = tio.SubjectsDataset(subjects, transform=tio.RandomFlip(axes=(0,)))
        self.queue = tio.Queue(dataset, max_length=48, samples_per_volume=8, sampler=tio.UniformSampler(8),
                               num_workers=0, shuffle_subjects=True, shuffle_patches=True)

    def train_dataloader(self):
        return tio.SubjectsLoader(self.queue, batch_size=8, num_workers=0)


class PatchClassifier(CountingModule):
    def training_step(self, batch, batch_idx):
        x, y = batch["t1"][tio.DATA], batch["label"]
        self.count(x)
        return F.cross_entropy(self.net(x), y)


@pytest.mark.parametrize("source", SOURCES)
def test_subjects_patch_queue(source, generators, banks):
    data = mix(PatchData(), source, "3d8", generators, banks, ratio=0.5, image_key="t1")
    model = PatchClassifier(spatial_dims=3)
    fit_one_epoch(model, data)
    assert model.seen == 2 * 48
    synthetic = data.train_dataloader().dataset[60]
    assert isinstance(synthetic, tio.Subject) and isinstance(synthetic["t1"], tio.ScalarImage)
    assert synthetic["t1"].spacing == (2.0, 1.0, 1.0)  # the real patches' geometry
    assert torch.equal(synthetic["location"], torch.zeros(6, dtype=torch.int64))  # no place in a volume
