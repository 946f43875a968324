"""Segmentation projects (``(image, mask)`` tuples, dicts under their own keys) and a detection project
(``(image, {"boxes", "labels"})`` with its custom collate), with a mask-conditional generator."""

import lightning as L
import pytest
import torch
from conformance_projects import Segmenter
from conformance_testing import SOURCES, fit_one_epoch, mix
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import masks_to_boxes

from lightning_medaug.data import make_phantoms


class Pairs(Dataset):
    def __init__(self, layout):
        self.images, _, self.masks = make_phantoms(16, image_size=16, seed=9)
        self.layout = layout

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, mask = self.images[i], self.masks[i]
        if self.layout == "tuple":
            return image, mask.long()
        if self.layout == "dict":
            return {"scan": image, "seg": mask.bool()}
        target = {"boxes": masks_to_boxes(mask > 0.5), "labels": torch.ones(1, dtype=torch.int64)}
        return image, target


class PairData(L.LightningDataModule):
    def __init__(self, layout, collate=None):
        super().__init__()
        self.layout, self.collate = layout, collate

    def train_dataloader(self):
        return DataLoader(Pairs(self.layout), batch_size=4, shuffle=True, collate_fn=self.collate)


@pytest.mark.parametrize("source", SOURCES)
def test_segmentation_tuples(source, generators, banks):
    data = mix(PairData("tuple"), source, "mask16", generators, banks, ratio=0.5)
    model = Segmenter()
    fit_one_epoch(model, data)
    assert model.seen == 32
    image, mask = data.train_dataloader().dataset[20]
    assert mask.dtype == torch.int64 and mask.shape == (1, 16, 16) and set(mask.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("source", SOURCES)
def test_segmentation_dicts_with_own_keys(source, generators, banks):
    data = mix(PairData("dict"), source, "mask16", generators, banks, ratio=0.5, image_key="scan", mask_key="seg")
    model = Segmenter(image_key="scan", mask_key="seg")
    fit_one_epoch(model, data)
    assert model.seen == 32
    assert data.train_dataloader().dataset[20]["seg"].dtype == torch.bool


def detection_collate(batch):
    return tuple(zip(*batch))


class Detector(L.LightningModule):
    """torchvision detection style: a list of images and a list of target dicts."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 4)
        self.seen = 0

    def training_step(self, batch, batch_idx):
        images, targets = batch
        self.seen += len(images)
        boxes = torch.cat([t["boxes"] for t in targets])
        assert boxes.shape[1] == 4 and all(t["labels"].dtype == torch.int64 for t in targets)
        return torch.nn.functional.mse_loss(self.head(boxes / 16), boxes / 16)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def boxes_from_synthetic(item):
    """The user's ``to_sample``: boxes of the synthetic mask, as their dataset builds targets."""
    mask = item["mask"] > 0.5
    return item["image"], {"boxes": masks_to_boxes(mask), "labels": torch.ones(1, dtype=torch.int64)}


@pytest.mark.parametrize("source", SOURCES)
def test_detection_is_refused_at_setup_without_to_sample(source, generators, banks):
    data = mix(PairData("detection", detection_collate), source, "mask16", generators, banks, ratio=0.5)
    with pytest.raises(ValueError, match=r"cannot provide: sample\[1\]\['boxes'\].*to_sample="):
        data.setup("fit")


def test_detection_with_to_sample_from_a_bank_of_pairs(generators, banks):
    data = mix(PairData("detection", detection_collate), "bank", "mask16", generators, banks, ratio=0.5,
               to_sample=boxes_from_synthetic)
    model = Detector()
    fit_one_epoch(model, data)
    assert model.seen == 32


def test_detection_from_a_mask_conditional_generator_is_refused_at_setup(generators, banks):
    """Detection samples hold boxes, not masks, so a mask-conditional generator has nothing to draw from."""
    data = mix(PairData("detection", detection_collate), "model", "mask16", generators, banks, ratio=0.5,
               to_sample=boxes_from_synthetic)
    with pytest.raises(ValueError, match="carry no masks to condition on.*medaug generate --masks"):
        data.setup("fit")
