"""Generator callbacks: the non-finite loss guard and the sample grid, on real Trainer runs."""

import re

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader

from lightning_medaug.data import PhantomDataModule, make_phantoms
from lightning_medaug.generative import GenerativeModule
from lightning_medaug.generative.callbacks import (
    FiniteLossGuard,
    NonFiniteLossError,
    SampleGridCallback,
)
from lightning_medaug.generative.vae import VAE
from lightning_medaug.rendering import make_grid_array

TINY = {"image_size": 16, "channels": (8, 16), "norm_num_groups": 4, "latent_channels": 2}


def trainer(max_steps: int, callbacks, **kwargs) -> L.Trainer:
    kwargs = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
              "enable_model_summary": False, "max_steps": max_steps, "limit_val_batches": 0, **kwargs}
    return L.Trainer(callbacks=callbacks, **kwargs)


def batches_with_nan_in_third(spatial_dims: int = 2) -> DataLoader:
    """Four batches of four phantoms; the third batch holds a NaN pixel (a corrupt scan)."""
    images, labels, masks = make_phantoms(16, spatial_dims, 16)
    images[9, 0, 3, 3] = float("nan")
    items = [{"image": i, "label": y, "mask": m} for i, y, m in zip(images, labels, masks)]
    return DataLoader(items, batch_size=4, shuffle=False)


def test_guard_stops_before_a_broken_checkpoint(tmp_path):
    model = VAE(**TINY)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    run = trainer(10, [FiniteLossGuard(), ckpt], enable_checkpointing=True)
    with pytest.raises(NonFiniteLossError, match=r"loss became NaN or infinite \(loss\) at step 2; lower the learning "
                                                 r"rate or enable gradient clipping .* no checkpoint was written"):
        run.fit(model, train_dataloaders=batches_with_nan_in_third())
    steps = sorted(int(re.search(r"step=(\d+)", p.name).group(1)) for p in tmp_path.glob("*.ckpt"))
    assert steps == [1, 2]  # the two good steps were saved, nothing after the NaN batch
    for path in tmp_path.glob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the guard fires before backward, so the weights in memory are still the last good ones
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert isinstance(NonFiniteLossError("x"), ValueError) and isinstance(NonFiniteLossError("x"), FloatingPointError)


class ManualOptimizationModule(L.LightningModule):
    """A GAN-like user module: manual optimization, training_step returns None, losses only logged."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Conv2d(1, 1, 3, padding=1)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = (self.net(batch["image"]) - batch["image"]).pow(2).mean()
        self.log("train/loss_g", loss)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_guard_works_with_manual_optimization():
    model = ManualOptimizationModule()
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        trainer(10, [FiniteLossGuard()]).fit(model, train_dataloaders=batches_with_nan_in_third())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_guard_reads_logged_losses_when_nothing_is_returned():
    class LogsOnly(ManualOptimizationModule):
        def training_step(self, batch, batch_idx):
            self.log("train/loss_d", batch["image"].mean())  # e.g. a discriminator loss reported, not stepped

    with pytest.raises(NonFiniteLossError, match=r"\(train/loss_d\)"):
        trainer(10, [FiniteLossGuard()]).fit(LogsOnly(), train_dataloaders=batches_with_nan_in_third())


class RunawayStep(L.LightningModule):
    """A finite loss whose optimizer step makes weights infinite (an unbounded learning rate)."""

    def __init__(self, lr: float):
        super().__init__()
        self.net = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        return (self.net(batch["image"].nan_to_num()) - 1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_guard_catches_weights_a_finite_loss_made_infinite():
    with pytest.raises(NonFiniteLossError, match=r"\(weights after the optimizer step\) at step 1"):
        trainer(4, [FiniteLossGuard()]).fit(RunawayStep(lr=float("inf")), train_dataloaders=batches_with_nan_in_third())


def test_guard_lets_huge_but_finite_weights_pass():
    """The check reads each tensor's 2-norm, which overflows for weights near 1e30: the exact check decides."""
    model = RunawayStep(lr=0.01)
    model.register_parameter("idle", torch.nn.Parameter(torch.full((64,), 1e30), requires_grad=False))
    run = trainer(4, [FiniteLossGuard()])
    run.fit(model, train_dataloaders=batches_with_nan_in_third())
    assert run.global_step == 4 and not torch.isfinite(torch.linalg.vector_norm(model.idle))


def test_sample_grid_written_every_epoch_with_training_mode_restored(tmp_path):
    model = VAE(num_classes=2, cond_channels=2, **TINY)
    data = PhantomDataModule(image_size=16, num_train=8, num_val=4, num_test=4, batch_size=8)
    modes = []
    check = LambdaCallback(on_train_epoch_end=lambda tr, m: modes.append(m.training and m.autoencoder.training))
    grid = SampleGridCallback(every_n_epochs=1, num_samples=4, seed=0)
    trainer(2, [grid, check], default_root_dir=tmp_path).fit(model, datamodule=data)
    files = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert files == ["samples_epoch000.png", "samples_epoch001.png"]
    assert modes == [True, True]
    with Image.open(tmp_path / "samples" / "samples_epoch001.png") as png:
        # 4 tiles of 16 px scaled x2, 2 per row, 2 px padding, a 12 px caption strip per tile
        assert png.size == (2 * (32 + 2) + 2, 2 * (32 + 12 + 2) + 2)
        expected = make_grid_array(model.sample(4, labels=torch.tensor([0, 1, 0, 1]),
                                                generator=torch.Generator().manual_seed(0)),
                                   labels=[0, 1, 0, 1], scale=2)
        written = np.asarray(png.convert("RGB")).astype(np.int16)
    assert np.abs(written - expected.astype(np.int16)).max() <= 1  # the grid shows the seeded samples


class MaskToImage(GenerativeModule):
    """A tiny mask-conditional user family: a learned intensity painted inside the mask."""

    requires_masks = True

    def __init__(self, image_size: int = 16):
        super().__init__(2, 1, image_size, 0)
        self.save_hyperparameters()
        self.inside = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        fake = batch["mask"] * self.inside - (1 - batch["mask"])
        return (fake - batch["image"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample(self, n, labels=None, masks=None, generator=None):
        labels, masks = self.check_sample_args(n, labels, masks, generator)
        return (masks * self.inside - (1 - masks)).clamp(-1, 1).detach()


def test_sample_grid_uses_fixed_validation_masks(tmp_path):
    data = PhantomDataModule(spatial_dims=2, image_size=16, num_train=4, num_val=3, num_test=2, batch_size=4)
    grid = SampleGridCallback(num_samples=5, dirpath=str(tmp_path / "grids"), scale=1)
    trainer(1, [grid], limit_val_batches=1, num_sanity_val_steps=0).fit(MaskToImage(), datamodule=data)
    assert grid.last_path == tmp_path / "grids" / "samples_epoch000.png"
    val_masks = data.datasets["val"].masks
    assert torch.equal(grid._masks, torch.cat([val_masks, val_masks[:2]]))  # 3 validation masks, cycled to 5
    with Image.open(grid.last_path) as png:
        assert png.size == (3 * 18 + 2, 2 * 18 + 2)


@pytest.mark.parametrize("kwargs", [{"every_n_epochs": 0}, {"num_samples": 0}, {"scale": 0}])
def test_sample_grid_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SampleGridCallback(**kwargs)
