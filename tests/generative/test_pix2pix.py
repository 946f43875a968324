"""pix2pix: mask -> image on tiny 2D/3D phantoms with real Trainer runs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.pix2pix import Pix2Pix
from lightning_medaug.registry import create_generator

SIZE = {2: 16, 3: 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(spatial_dims: int, **overrides) -> Pix2Pix:
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZE[spatial_dims], "generator_channels": 8,
              "generator_levels": 3 if spatial_dims == 2 else 2, "num_res_units": 0, "discriminator_channels": 8,
              "lr": 2e-3}
    kwargs.update(overrides)
    return Pix2Pix(**kwargs)


def trainer(max_steps: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, max_steps=max_steps, num_sanity_val_steps=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_training_brings_images_closer_to_their_pairs(spatial_dims):
    L.seed_everything(0)
    model = tiny(spatial_dims)
    data = PhantomDataModule(spatial_dims=spatial_dims, image_size=SIZE[spatial_dims], num_train=32, num_val=8,
                             num_test=8, batch_size=8)
    data.setup()
    images, masks = data.datasets["val"].images, data.datasets["val"].masks
    before = F.l1_loss(model.sample(8, masks=masks), images).item()
    fit = trainer(40)  # 20 batches: global_step counts the D and the G step
    fit.fit(model, data)
    after = F.l1_loss(model.sample(8, masks=masks), images).item()
    assert after < 0.6 * before
    assert torch.isfinite(fit.callback_metrics["train/loss"]) and "val/l1" in fit.callback_metrics


def test_sample_is_aligned_with_masks_and_validated(tmp_path):
    model = tiny(2, noise_channel=True)
    masks = torch.zeros(3, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    out = model.sample(3, masks=masks, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32 and out.abs().max() <= 1
    assert torch.equal(out, model.sample(3, masks=masks, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(out, model.sample(3, masks=masks, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="mask-conditional"):
        model.sample(3)
    with pytest.raises(ValueError, match="masks must have shape"):
        model.sample(3, masks=torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(3, masks=masks, labels=torch.zeros(3, dtype=torch.long))
    model.save_pretrained(tmp_path)
    loaded = load_generator(tmp_path)
    assert torch.equal(loaded.sample(3, masks=masks, generator=torch.Generator().manual_seed(0)), out)


def test_arguments_and_batches_are_validated():
    assert isinstance(create_generator("pix2pix", image_size=16, generator_levels=3), Pix2Pix)
    with pytest.raises(ValueError, match="generator_levels"):
        Pix2Pix(image_size=16, generator_levels=5)
    with pytest.raises(ValueError, match="num_classes=0"):
        Pix2Pix(image_size=16, generator_levels=3, num_classes=2)
    with pytest.raises(ValueError, match="discriminator_layers"):
        Pix2Pix(image_size=16, generator_levels=3, discriminator_layers=3)
    with pytest.raises(ValueError, match="'mask' entry"):
        tiny(2).training_step({"image": torch.zeros(2, 1, 16, 16)}, 0)
