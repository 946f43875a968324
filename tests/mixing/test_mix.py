"""SyntheticMixDataModule around a data module written the way a user would write one."""

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_medaug.data import PhantomDataModule, make_phantoms
from lightning_medaug.mixing import MixSampler, SyntheticMixDataModule, balance_allocation
from lightning_medaug.registry import create_generator


class UserDataModule(L.LightningDataModule):
    """Not ours: plain tensors, tuple batches, its own batch size and a 1-D float label dtype."""

    def __init__(self, n_train=60, imbalance=False):
        super().__init__()
        images, labels, _ = make_phantoms(n_train + 20, image_size=16, seed=3)
        if imbalance:
            labels[: n_train] = (torch.arange(n_train) % 6 == 0).long()  # ~17% positives
        self.train_set = TensorDataset(images[:n_train], labels[:n_train])
        self.val_set = TensorDataset(images[n_train:n_train + 10], labels[n_train:n_train + 10])
        self.test_set = TensorDataset(images[n_train + 10:], labels[n_train + 10:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=8)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return create_generator("cvae", image_size=16, num_classes=2, channels=[8, 16], norm_num_groups=4,
                            latent_channels=2, cond_channels=2)


def _epoch(dm):
    return list(dm.train_dataloader())


@pytest.mark.parametrize("mode", ["add", "replace"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_ratio_holds_over_an_epoch(generator, mode, ratio):
    user = UserDataModule()
    dm = SyntheticMixDataModule(user, model=generator, ratio=ratio, mode=mode, return_is_synthetic=True)
    batches = _epoch(dm)
    flags = torch.cat([b[2] for b in batches])
    assert abs(flags.float().mean().item() - ratio) <= 0.01 + 1 / len(flags)
    if mode == "add":
        assert (~flags).sum() == len(user.train_set)  # every real sample kept
    else:
        assert len(flags) == len(user.train_set)  # epoch length kept


def test_batches_have_the_wrapped_structure_and_eval_loaders_are_untouched(generator):
    user = UserDataModule()
    dm = SyntheticMixDataModule(user, model=generator, ratio=0.5)
    real_batch = next(iter(user.train_dataloader()))
    mixed = _epoch(dm)
    for batch in mixed:
        assert isinstance(batch, list) and len(batch) == len(real_batch)  # default_collate makes lists
        assert batch[0].dtype == real_batch[0].dtype and batch[0].shape[1:] == real_batch[0].shape[1:]
        assert batch[1].dtype == real_batch[1].dtype and batch[1].ndim == real_batch[1].ndim
        assert batch[0].min() >= -1 and batch[0].max() <= 1
    assert dm.val_dataloader().dataset is user.val_set
    assert dm.test_dataloader().dataset is user.test_set


class UserSegmentationData(L.LightningDataModule):
    """A user's segmentation module: MONAI-style dicts with an image and its mask, no class label."""

    def __init__(self):
        super().__init__()
        images, _, masks = make_phantoms(24, image_size=16, seed=5)
        self.train_set = [{"img": i, "seg": m} for i, m in zip(images, masks)]

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)


def test_dict_batches_with_masks_keep_their_keys_and_pairs():
    torch.manual_seed(0)
    masked = create_generator("pix2pix", image_size=16, in_channels=1)
    dm = SyntheticMixDataModule(UserSegmentationData(), model=masked, ratio=0.5, return_is_synthetic=True,
                                image_key="img", mask_key="seg")
    real_masks = {tuple(s["seg"].flatten().tolist()) for s in dm.datamodule.train_set}
    for batch in _epoch(dm):
        assert set(batch) == {"img", "seg", "is_synthetic"}
        syn = batch["is_synthetic"]
        assert batch["img"].shape == batch["seg"].shape and syn.any()
        # Each synthetic image was generated from a real mask and carries that very mask.
        for mask in batch["seg"][syn]:
            assert tuple(mask.flatten().tolist()) in real_masks


def test_mask_generator_cannot_invent_class_labels():
    phantoms = PhantomDataModule(image_size=16, num_train=16, num_val=8, num_test=8)
    phantoms.setup("fit")
    masked = create_generator("pix2pix", image_size=16, in_channels=1)
    with pytest.raises(ValueError, match="labels but the synthetic source has none"):
        _epoch(SyntheticMixDataModule(phantoms, model=masked, ratio=0.5))


def test_ddp_shares_are_disjoint_and_cover_the_epoch():
    labels = np.arange(100) % 2
    samplers = [MixSampler(50, labels, ratio=0.5, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for s in samplers:
        s.set_epoch(3)
    shares = [list(s) for s in samplers]
    assert len(shares[0]) == len(shares[1]) == 50
    assert not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(samplers[0].epoch_indices().tolist())
    samplers[0].set_epoch(4)
    assert list(samplers[0]) != shares[0]  # a new epoch, a new order and new synthetic samples


def test_successive_epochs_walk_through_the_synthetic_pool():
    sampler = MixSampler(10, np.zeros(40, dtype=int), ratio=0.5, seed=0)
    seen = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen |= {i for i in sampler if i >= 10}
    assert len(seen) == 40


def test_class_balance_evens_out_the_classes(generator):
    user = UserDataModule(imbalance=True)
    balanced = SyntheticMixDataModule(user, model=generator, ratio=0.5, class_balance=True,
                                      num_generated=200)
    labels = torch.cat([b[1] for b in _epoch(balanced)])
    counts = torch.bincount(labels.long(), minlength=2)
    assert abs(counts[0] - counts[1]) <= 1, counts
    assert balance_allocation([10, 50], 40, [100, 100]).tolist() == [40, 0]


def test_ratio_schedule_and_exact_resume(generator):
    user = UserDataModule()
    dm = SyntheticMixDataModule(user, model=generator, ratio=0.0, mode="replace",
                                ratio_schedule={2: 0.5}, return_is_synthetic=True)
    dm.train_dataloader()
    assert dm.sampler.synthetic_fraction(0) == 0.0 and dm.sampler.synthetic_fraction(2) == 0.5
    dm.sampler.set_epoch(2)
    order = list(dm.sampler)
    state = dm.state_dict()
    again = SyntheticMixDataModule(UserDataModule(), model=generator, ratio=0.0, mode="replace",
                                   ratio_schedule={2: 0.5})
    again.load_state_dict(state)
    again.train_dataloader()
    assert list(again.sampler) == order
    other = SyntheticMixDataModule(UserDataModule(), model=generator, ratio=0.3, mode="replace")
    with pytest.raises(ValueError, match="ratio"):
        other.load_state_dict(state)


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.5}, r"ratio must lie in \[0, 1\]"),
    ({"ratio": -0.1}, r"ratio must lie in \[0, 1\]"),
    ({"ratio": 1.0, "mode": "add"}, "mode='replace'"),
    ({"mode": "interleave"}, "mode must be one of"),
    ({"mode": "swap"}, "pass bank="),  # swap needs a bank of edits, not a generator
])
def test_bad_arguments(generator, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticMixDataModule(UserDataModule(), model=generator, **kwargs)


def test_bad_sources(generator):
    with pytest.raises(ValueError, match="exactly one synthetic source"):
        SyntheticMixDataModule(UserDataModule())
    with pytest.warns(FutureWarning, match="pass model="):  # the old name still works, for one release
        assert SyntheticMixDataModule(UserDataModule(), generator=generator).model is generator
    with pytest.raises(ValueError, match="not both"):
        SyntheticMixDataModule(UserDataModule(), model=generator, generator=generator)
    wrong_size = create_generator("cvae", image_size=32, num_classes=2, channels=[8, 16], norm_num_groups=4)
    with pytest.raises(ValueError, match="another image size or channel count"):
        SyntheticMixDataModule(UserDataModule(), model=wrong_size, num_generated=4).train_dataloader()
    more_classes = create_generator("cvae", image_size=16, num_classes=5, channels=[8, 16], norm_num_groups=4)
    phantoms = PhantomDataModule(image_size=16, num_train=16, num_val=8, num_test=8)
    with pytest.raises(ValueError, match="labels up to"):
        SyntheticMixDataModule(phantoms, model=more_classes, num_generated=40).train_dataloader()


class UserClassifier(L.LightningModule):
    """A user's model that knows nothing of synthetic data."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2))

    def training_step(self, batch, batch_idx):
        image, label = batch
        loss = torch.nn.functional.cross_entropy(self.net(image), label)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        image, label = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self.net(image), label))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_user_model_trains_unchanged_with_bf16(generator):
    dm = SyntheticMixDataModule(UserDataModule(), model=generator, ratio=0.5)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(UserClassifier(), datamodule=dm)
    assert trainer.global_step == 2 * 15  # (60 real + 60 synthetic) / batch 8 per epoch
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


class SizedUserDataModule(UserDataModule):
    """A user's module that keeps its batch size as an attribute, as Lightning's batch-size finder expects."""

    def __init__(self):
        super().__init__()
        self.batch_size = 4

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


def test_batch_size_finder_sizes_the_mixed_batches(generator, tmp_path):
    """Lightning's BatchSizeFinder reaches the wrapped module's batch size through the mixer."""
    from lightning.pytorch.callbacks import BatchSizeFinder

    inner = SizedUserDataModule()
    dm = SyntheticMixDataModule(inner, model=generator, ratio=0.5)
    assert dm.batch_size == 4
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, init_val=2, max_trials=3)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        callbacks=[finder], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(UserClassifier(), datamodule=dm)
    assert finder.optimal_batch_size == 8  # 2, 4, 8: three trials, each fits on a CPU
    assert inner.batch_size == dm.batch_size == 8
    loader = dm.train_dataloader()
    assert next(iter(loader))[0].shape[0] == 8 and len(loader.dataset) == 120  # still mixed: 60 + 60
    with pytest.raises(AttributeError, match="keeps no batch_size"):
        SyntheticMixDataModule(UserDataModule(), model=generator).batch_size  # noqa: B018


def test_bank_pairs_stay_aligned_in_mixed_segmentation_batches(tmp_path):
    from lightning_medaug.bank import SyntheticBank, write_bank

    torch.manual_seed(0)
    _, _, masks = make_phantoms(8, image_size=16, seed=9)
    pix2pix = create_generator("pix2pix", image_size=16, in_channels=1)
    write_bank(pix2pix, tmp_path / "bank", num_samples=24, shard_size=10, batch_size=8, masks=masks,
               dtype="float32", progress=False)
    bank = SyntheticBank(tmp_path / "bank")
    pairs = {tuple(bank[i]["image"].flatten().tolist()): bank[i]["mask"] for i in range(len(bank))}
    dm = SyntheticMixDataModule(UserSegmentationData(), bank=str(tmp_path / "bank"), ratio=0.5,
                                return_is_synthetic=True, image_key="img", mask_key="seg")
    seen = 0
    for batch in _epoch(dm):
        for image, mask in zip(batch["img"][batch["is_synthetic"]], batch["seg"][batch["is_synthetic"]]):
            assert torch.equal(pairs[tuple(image.flatten().tolist())], mask)
            seen += 1
    assert seen == 24


def test_bank_errors(tmp_path):
    from lightning_medaug.bank import write_bank

    torch.manual_seed(0)
    cvae32 = create_generator("cvae", image_size=32, num_classes=2, channels=[8, 16], norm_num_groups=4)
    write_bank(cvae32, tmp_path / "b32", num_samples=8, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="another image size or channel count"):
        SyntheticMixDataModule(UserDataModule(), bank=str(tmp_path / "b32")).train_dataloader()
    with pytest.raises(ValueError, match="are not classes"):
        SyntheticMixDataModule(UserDataModule(), bank=str(tmp_path / "b32"), bank_labels=[7]).train_dataloader()
    with pytest.raises(ValueError, match="score"):  # no sample has a score: nothing is left to mix
        SyntheticMixDataModule(UserDataModule(), bank=str(tmp_path / "b32"), min_score=0.5).train_dataloader()
