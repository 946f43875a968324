"""Projects with their own sampling rule (weighted sampler, batch sampler, a stream) and multi-hot labels."""

import lightning as L
import pytest
import torch
from conformance_projects import MultiLabelClassifier, TupleClassifier
from conformance_testing import SOURCES, fit_one_epoch, mix
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset, WeightedRandomSampler

from lightning_medaug.data import make_phantoms


def skewed(n=40, positives=4, seed=10):
    images, _, _ = make_phantoms(n, image_size=16, seed=seed)
    labels = torch.zeros(n, dtype=torch.int64)
    labels[:positives] = 1
    return TensorDataset(images, labels)


class FlagCounter(TupleClassifier):
    """Reads ``(x, y, is_synthetic)`` and keeps the labels of the real samples it trained on."""

    def __init__(self):
        super().__init__()
        self.real_labels, self.batches = [], []

    def training_step(self, batch, batch_idx):
        x, y, flag = batch
        self.real_labels.append(y[~flag])
        self.batches.append((y, flag))
        return super().training_step((x, y), batch_idx)


class WeightedData(L.LightningDataModule):
    """Class balancing as medical projects do it: weights inverse to class frequency."""

    def train_dataloader(self):
        data = skewed()
        counts = torch.bincount(data.tensors[1])
        weights = 1.0 / counts[data.tensors[1]].double()
        return DataLoader(data, batch_size=8, sampler=WeightedRandomSampler(weights, num_samples=400))


@pytest.mark.parametrize("source", SOURCES)
def test_weighted_random_sampler_keeps_choosing_the_real_samples(source, generators, banks):
    data = mix(WeightedData(), source, "2d16", generators, banks, ratio=0.5, return_is_synthetic=True,
               num_generated=64)
    model = FlagCounter()
    fit_one_epoch(model, data)
    real = torch.cat(model.real_labels)
    assert model.seen == 800 and len(real) == 400  # the sampler's 400 draws, and as many synthetic on top
    assert 0.4 < real.float().mean() < 0.6  # balanced by the user's weights (10% positives without them)


class ClassPureBatches(Sampler):
    """A user's batch sampler: each batch holds one class only."""

    def __init__(self, labels, batch_size):
        self.labels, self.batch_size = labels, batch_size

    def __iter__(self):
        for c in self.labels.unique().tolist():
            members = torch.nonzero(self.labels == c).flatten()
            members = members[torch.randperm(len(members))]
            yield from (members[i:i + self.batch_size].tolist() for i in range(0, len(members), self.batch_size))

    def __len__(self):
        return sum(-(-int((self.labels == c).sum()) // self.batch_size) for c in self.labels.unique())


class BatchSamplerData(L.LightningDataModule):
    def train_dataloader(self):
        data = skewed(positives=16)
        return DataLoader(data, batch_sampler=ClassPureBatches(data.tensors[1], 4))


@pytest.mark.parametrize("mode", ["add", "replace"])
@pytest.mark.parametrize("source", SOURCES)
def test_batch_sampler_batches_are_kept_and_get_their_synthetic_share(source, mode, generators, banks):
    data = mix(BatchSamplerData(), source, "2d16", generators, banks, ratio=0.5, mode=mode,
               return_is_synthetic=True)
    model = FlagCounter()
    fit_one_epoch(model, data)
    assert len(model.batches) == 10
    for labels, flag in model.batches:
        assert len(labels[~flag].unique()) == 1  # the user's class-pure batch, kept
        assert int(flag.sum()) == (4 if mode == "add" else 2) and len(labels) == (8 if mode == "add" else 4)


class Stream(IterableDataset):
    """A streamed training set (WebDataset-style): no length, no indices."""

    def __iter__(self):
        images, labels, _ = make_phantoms(30, image_size=16, seed=11)
        yield from zip(images, labels.tolist())


class StreamData(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=8)


@pytest.mark.parametrize("mode", ["add", "replace"])
@pytest.mark.parametrize("source", SOURCES)
def test_streamed_real_set_is_interleaved_at_the_ratio(source, mode, generators, banks):
    data = mix(StreamData(), source, "2d16", generators, banks, ratio=0.25, mode=mode, return_is_synthetic=True,
               num_generated=64)
    model = FlagCounter()
    fit_one_epoch(model, data)
    flags = torch.cat([flag for _, flag in model.batches])
    assert int(flags.sum()) == (10 if mode == "add" else 7)  # 30 * 0.25 / 0.75 added; 30 * 0.25 replaced
    assert len(flags) == (40 if mode == "add" else 30)


class MultiHot(L.LightningDataModule):
    """Multi-label findings: a float multi-hot vector per image (3 findings)."""

    def train_dataloader(self):
        images, labels, _ = make_phantoms(24, image_size=16, seed=12)
        targets = torch.zeros(24, 3)
        targets[torch.arange(24), labels] = 1.0
        targets[::5, 2] = 1.0  # some images carry two findings
        return DataLoader(TensorDataset(images, targets), batch_size=6, shuffle=True)


@pytest.mark.parametrize("source", SOURCES)
def test_multi_hot_labels(source, generators, banks):
    data = mix(MultiHot(), source, "2d16x3", generators, banks, ratio=0.5)
    model = MultiLabelClassifier(num_classes=3)
    fit_one_epoch(model, data)
    assert model.seen == 48
    _, target = data.train_dataloader().dataset[30]
    assert target.dtype == torch.float32 and target.shape == (3,) and target.sum() == 1  # one finding per class
