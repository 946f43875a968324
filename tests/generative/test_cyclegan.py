"""CycleGAN: unpaired MR <-> CT phantoms, 2D and 3D, with real Trainer runs."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_medaug.data import PhantomDataset
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.cyclegan import CycleGAN
from lightning_medaug.generative.unpaired_data import (
    PhantomDomainsDataModule,
    UnpairedDataset,
)

SIZE = {2: 16, 3: 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(spatial_dims: int) -> CycleGAN:
    return CycleGAN(spatial_dims=spatial_dims, image_size=SIZE[spatial_dims], generator_channels=8,
                    generator_levels=2, discriminator_channels=8, lr=2e-3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cycle_loss_goes_down_and_translate_keeps_shapes(spatial_dims, tmp_path):
    L.seed_everything(0)
    model = tiny(spatial_dims)
    data = PhantomDomainsDataModule(spatial_dims=spatial_dims, image_size=SIZE[spatial_dims], num_train=32,
                                    num_val=8, batch_size=8)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        before = model.cycle_loss(batch["image_a"], batch["image_b"])[0].item()
    fit = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, max_steps=30, num_sanity_val_steps=0)
    fit.fit(model, data)
    with torch.no_grad():
        after = model.cycle_loss(batch["image_a"], batch["image_b"])[0].item()
    assert after < 0.8 * before
    assert torch.isfinite(fit.callback_metrics["train/loss"]) and "val/loss_cycle" in fit.callback_metrics

    for direction, source in (("a2b", batch["image_a"]), ("b2a", batch["image_b"])):
        out = model.translate(source, direction=direction)
        assert out.shape == source.shape and out.dtype == torch.float32 and out.abs().max() <= 1
    model.save_pretrained(tmp_path)
    assert torch.equal(load_generator(tmp_path).translate(batch["image_a"]), model.translate(batch["image_a"]))


def test_sample_points_to_translate_and_inputs_are_validated():
    model = tiny(2)
    with pytest.raises(ValueError, match="translate"):
        model.sample(4)
    with pytest.raises(ValueError, match="direction"):
        model.translate(torch.zeros(1, 1, 16, 16), direction="ab")
    with pytest.raises(ValueError, match="images must have shape"):
        model.translate(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="image_a"):
        model.training_step({"image": torch.zeros(2, 1, 16, 16)}, 0)
    with pytest.raises(ValueError, match="different contrasts"):
        PhantomDomainsDataModule(style_a="ct", style_b="ct")


def test_unpaired_dataset_draws_partners_from_the_other_domain():
    a, b = PhantomDataset(4, image_size=8, seed=0, style="mr"), PhantomDataset(3, image_size=8, seed=1, style="ct")
    fixed = UnpairedDataset(a, b, random_partner=False)
    assert len(fixed) == 4 and torch.equal(fixed[3]["image_b"], b[0]["image"])
    assert torch.equal(fixed[1]["image_a"], a[1]["image"])
    shuffled = UnpairedDataset(a, b)
    pool = torch.stack([b[j]["image"] for j in range(3)])
    partners = {int((pool == shuffled[0]["image_b"]).flatten(1).all(1).nonzero()) for _ in range(12)}
    assert len(partners) > 1  # a fresh random partner per access
