"""DA-Fusion swap mode (a real sample for one of its own edits) and the synthetic-then-real curriculum."""

import lightning as L
import numpy as np
import pytest
import torch

from lightning_medaug.bank import SyntheticBank
from lightning_medaug.bank.edits import write_edit_bank
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.mixing import MixSampler, SyntheticMixDataModule
from lightning_medaug.registry import create_generator


def phantoms():
    return PhantomDataModule(image_size=8, num_classes=2, num_train=10, num_val=4, num_test=4, batch_size=4,
                             with_masks=False)


@pytest.fixture(scope="module")
def edit_bank(tmp_path_factory):
    torch.manual_seed(0)
    model = DDPM(image_size=8, num_classes=2, channels=(8, 16), norm_num_groups=8, num_inference_steps=4)
    data = phantoms()
    data.setup("fit")
    out = tmp_path_factory.mktemp("edits") / "bank"
    write_edit_bank(model, out, data.train_dataloader().dataset, strength=0.5, num_samples=20, progress=False)
    return out


def test_swap_replaces_real_samples_by_their_own_edits(edit_bank):
    data = SyntheticMixDataModule(phantoms(), bank=str(edit_bank), ratio=0.5, mode="swap", seed=3)
    data.setup("fit")
    loader = data.train_dataloader()
    parents = SyntheticBank(edit_bank).column("parent_index").astype(int)
    assert sorted(parents.tolist()) == sorted(list(range(10)) * 2)  # two edits of each training image
    plain = MixSampler(10, np.zeros(20, dtype=int), ratio=0.0, mode="swap", seed=3, synthetic_parents=parents)
    swapped_total = 0
    for epoch in range(6):
        data.sampler.set_epoch(epoch)
        plain.set_epoch(epoch)
        mixed, real = data.sampler.epoch_indices(), plain.epoch_indices()
        assert len(mixed) == len(real) == 10  # the epoch keeps its length
        swapped = mixed >= 10
        assert np.array_equal(parents[mixed[swapped] - 10], real[swapped])  # each edit stands in for its parent
        swapped_total += int(swapped.sum())
    assert 15 <= swapped_total <= 45  # about half of 60
    assert len(next(iter(loader))["image"]) == 4


def test_swap_needs_a_bank_of_edits(tmp_path):
    from lightning_medaug.bank import write_bank

    model = create_generator("cvae", image_size=8, num_classes=2, channels=[4, 8], norm_num_groups=4,
                             latent_channels=2, cond_channels=2)
    write_bank(model, tmp_path / "plain", num_samples=8, labels="balanced", progress=False)
    data = SyntheticMixDataModule(phantoms(), bank=str(tmp_path / "plain"), ratio=0.5, mode="swap")
    with pytest.raises(ValueError, match="needs a bank of edits"):
        data.setup("fit")
    with pytest.raises(ValueError, match="swap.*bank="):
        SyntheticMixDataModule(phantoms(), model=model, mode="swap")


def test_synthetic_then_real_curriculum(tmp_path):
    model = create_generator("cvae", image_size=8, num_classes=2, channels=[4, 8], norm_num_groups=4,
                             latent_channels=2, cond_channels=2)
    data = SyntheticMixDataModule(phantoms(), model=model, mode="replace", ratio_schedule="synthetic_then_real:2",
                                  return_is_synthetic=True)
    seen = []

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((trainer.current_epoch, batch["is_synthetic"].float().mean().item()))

    task = create_generator("cvae", image_size=8, num_classes=2, channels=[4, 8], norm_num_groups=4,
                            latent_channels=2, cond_channels=2)
    L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, callbacks=[Recorder()]).fit(task, datamodule=data)
    assert {e for e, f in seen if f == 1.0} == {0, 1} and {e for e, f in seen if f == 0.0} == {2, 3}
    with pytest.raises(ValueError, match="synthetic_then_real:N"):
        SyntheticMixDataModule(phantoms(), model=model, mode="replace", ratio_schedule="real_first")
    with pytest.raises(ValueError, match="needs mode='replace'"):
        SyntheticMixDataModule(phantoms(), model=model, ratio_schedule="synthetic_then_real:2")
