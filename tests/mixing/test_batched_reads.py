"""Batched reads of the mixed training loader give exactly what per-sample reads give."""

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.data import make_phantoms
from lightning_medaug.mixing import (
    GeneratedPool,
    SampleTemplate,
    SyntheticAdapter,
    SyntheticMixDataModule,
)
from lightning_medaug.mixing.sampler import _permutation
from lightning_medaug.registry import create_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """A labelled float16 bank (shards 16 + 16 + 8) and a uint8 image/mask bank (shards 10 + 10 + 4)."""
    root = tmp_path_factory.mktemp("banks")
    torch.manual_seed(0)
    cvae = create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4, latent_channels=2)
    write_bank(cvae, root / "f16", 40, shard_size=16, batch_size=16, progress=False)
    _, _, masks = make_phantoms(8, image_size=16, seed=9)
    pix2pix = create_generator("pix2pix", image_size=16, in_channels=1)
    write_bank(pix2pix, root / "u8", 24, shard_size=10, batch_size=8, masks=masks, dtype="uint8", progress=False)
    return {"f16": root / "f16", "u8": root / "u8"}


def _equal(a, b) -> bool:
    """Same structure, same tensors (values, dtypes, shapes)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("name", ["f16", "u8"])
def test_bank_getitems_matches_getitem(banks, name):
    bank = SyntheticBank(banks[name])
    indices = [len(bank) - 1, 3, 17, 3, 0, 12, 22, 9]  # unsorted, repeated, across every shard
    items = bank.__getitems__(indices)
    assert len(items) == len(indices) and all(_equal(got, bank[i]) for got, i in zip(items, indices))
    batch = bank.read(np.array(indices))
    assert batch["image"].shape == (len(indices), *bank.image_shape) and batch["image"].dtype == torch.float32
    assert set(batch) == ({"image", "mask"} if name == "u8" else {"image", "label"})
    assert bank.__getitems__([]) == [] and bank.read([])["image"].shape == (0, *bank.image_shape)
    # Ground truth straight from the shard files (uint8 mapped back to [-1, 1]).
    for row, i in zip(batch["image"], indices):
        files = shard_files(banks[name], int(bank.manifest["shard"][i]))
        stored = torch.from_numpy(np.load(files.images)[int(bank.manifest["index"][i])].astype(np.float32))
        assert torch.equal(row, stored / 127.5 - 1.0 if name == "u8" else stored)
    rows = batch["image"].flatten(1)
    same_image = (rows[:, None] == rows[None]).all(-1)
    if name == "u8":  # pix2pix translates a mask one way: two rows are equal exactly where their masks are
        masks = batch["mask"].flatten(1)
        assert torch.equal(same_image, (masks[:, None] == masks[None]).all(-1))
    else:  # the cVAE's samples are equal only where an index repeats
        assert torch.equal(same_image, torch.tensor(indices)[:, None] == torch.tensor(indices)[None])


@pytest.mark.parametrize("flag", [False, True])
@pytest.mark.parametrize("layout", ["dict", "tuple", "list"])
@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 255.0)])
def test_adapter_getitems_matches_getitem(banks, layout, flag, value_range):
    real = {"dict": {"image": torch.zeros(1, 16, 16), "label": torch.tensor([1.0])},
            "tuple": (torch.zeros(1, 16, 16), torch.tensor(1)),
            "list": [torch.zeros(1, 16, 16, dtype=torch.float64), torch.tensor(1, dtype=torch.int32)]}[layout]
    template = SampleTemplate(real, value_range=value_range)
    bank = SyntheticBank(banks["f16"])
    generated = GeneratedPool(torch.rand(12, 1, 16, 16) * 2 - 1, torch.arange(12) % 2, num_classes=2)
    for source in (bank, generated):
        adapter = SyntheticAdapter(source, template, flag=flag)
        assert adapter.batched
        indices = [5, 0, 11, 5, 9]
        assert _equal(adapter.__getitems__(indices), [adapter[i] for i in indices])


class DictData(L.LightningDataModule):
    """Dict samples with a random per-sample transform: the order of its RNG draws must not change."""

    def __init__(self, transform: bool):
        super().__init__()
        images, labels, _ = make_phantoms(30, image_size=16, seed=3)
        self.train_set = _DictSet(images, labels, _jitter if transform else None)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)


class _DictSet(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        sample = {"image": self.images[index], "label": self.labels[index]}
        return self.transform(sample) if self.transform else sample


def _jitter(sample):
    return {**sample, "image": sample["image"] + 0.01 * torch.randn(())}


@pytest.mark.parametrize("transform", [False, True])
@pytest.mark.parametrize("flag", [False, True])
def test_mixed_loader_batches_match_per_sample_fetching(banks, transform, flag):
    dm = SyntheticMixDataModule(DictData(transform), bank=str(banks["f16"]), ratio=0.5,
                                return_is_synthetic=flag, value_range=(0.0, 1.0))
    loader = dm.train_dataloader()
    assert hasattr(loader.dataset, "__getitems__") and loader.dataset.synthetic.batched != transform
    plain = DataLoader(ConcatDataset(loader.dataset.datasets), batch_size=loader.batch_size, sampler=dm.sampler,
                       collate_fn=loader.collate_fn)
    torch.manual_seed(7)
    fast = list(loader)
    torch.manual_seed(7)
    slow = list(plain)
    assert len(fast) == len(slow) == 8 and all(_equal(a, b) for a, b in zip(fast, slow))
    assert sum(len(b["image"]) for b in fast) == 60
    if flag:
        assert int(torch.cat([b["is_synthetic"] for b in fast]).sum()) == 30


def test_mixed_dataset_with_tensor_tuples_and_negative_indices(banks):
    images, labels, _ = make_phantoms(20, image_size=16, seed=4)

    class Tuples(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(images, labels.float()), batch_size=4)

    dm = SyntheticMixDataModule(Tuples(), bank=str(banks["f16"]), ratio=0.5)
    dataset = dm.train_dataloader().dataset
    indices = [0, 25, -1, 19, 20, 59, 3]
    assert _equal(dataset.__getitems__(indices), [dataset[i] for i in indices])
    assert _equal(dataset.__getitems__([1, 2]), [dataset[1], dataset[2]])  # real only


def test_cached_pool_permutation_is_the_seeded_one():
    perm = _permutation((3, 0, 1), 1000)
    assert np.array_equal(perm, np.random.default_rng([3, 0, 1]).permutation(1000))
    assert _permutation((3, 0, 1), 1000) is perm and not perm.flags.writeable
    assert not np.array_equal(_permutation((4, 0, 1), 1000), perm)
