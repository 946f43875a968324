"""Mask-conditional latent diffusion: the mask folded onto the latent grid, samples at full resolution."""

from __future__ import annotations

import pytest
import torch
from generative_testing import quiet_trainer, seeded

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.latent_diffusion import mask_to_latent_grid
from lightning_medaug.generative.shapes import space_to_depth
from lightning_medaug.registry import create_generator

AE = {"channels": (8, 16, 16), "norm_num_groups": 4, "latent_channels": 2, "adversarial_weight": 0}
LDM = {"channels": (16, 32), "norm_num_groups": 8, "num_inference_steps": 3, "mask_conditional": True}


def test_space_to_depth_is_lossless_and_area_keeps_the_fraction():
    masks = (torch.rand(2, 1, 8, 12, 16) > 0.5).float()
    folded = space_to_depth(masks, (2, 4, 4))
    assert folded.shape == (2, 32, 4, 3, 4)
    assert torch.equal(folded.sum(1), masks.reshape(2, 4, 2, 3, 4, 4, 4).sum((2, 4, 6)))  # each block's pixels
    assert torch.equal(folded.unique(), masks.unique())
    with pytest.raises(ValueError, match="every side must be a multiple"):
        space_to_depth(masks, (3, 4, 4))
    area = mask_to_latent_grid(masks, (8, 12, 16), (2, 3, 4), "area")
    expected = masks.reshape(2, 1, 2, 4, 3, 4, 4, 4).mean((3, 5, 7)) * 2 - 1
    assert torch.allclose(area, expected, atol=1e-6)


@pytest.mark.parametrize("spatial_dims, size, how", [(2, (16, 24), "space_to_depth"), (3, (8, 12, 16), "area")])
def test_trains_on_pairs_and_samples_full_resolution_images_for_given_masks(spatial_dims, size, how, tmp_path):
    torch.manual_seed(0)
    ae = create_generator("kl_autoencoder", spatial_dims=spatial_dims, image_size=list(size), **AE)
    model = create_generator("ldm", autoencoder_path=str(ae.save_pretrained(tmp_path / "ae")),
                             mask_downsampling=how, **LDM)
    factor = 4
    expected_cond = factor ** spatial_dims if how == "space_to_depth" else 1
    assert model.unet.conv_in.conv.in_channels == 2 + expected_cond and model.requires_masks
    data = PhantomDataModule(spatial_dims=spatial_dims, image_size=size, num_train=4, num_val=2, num_test=2,
                             batch_size=2)
    trainer = quiet_trainer(2, limit_val_batches=0)
    trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    model.eval()
    masks = torch.zeros(2, 1, *size)
    masks[1, ..., : size[-1] // 2] = 1
    images = model.sample(2, masks=masks, generator=seeded(0))
    assert images.shape == (2, 1, *size) and images.abs().max() <= 1
    # the mask reaches the network: one noise, two masks, two images
    same_noise = model.sample(2, masks=masks[[0, 0]], generator=seeded(0))
    assert torch.equal(same_noise[0], images[0]) and not torch.allclose(same_noise[1], images[1])
    with pytest.raises(ValueError, match="is mask-conditional: pass masks"):
        model.sample(2)
    loaded = load_generator(model.save_pretrained(tmp_path / "ldm"))
    assert loaded.requires_masks and torch.allclose(loaded.sample(2, masks=masks, generator=seeded(0)), images,
                                                    atol=1e-5)
    edited = loaded.edit(images, 0.5, masks=masks, generator=seeded(1))  # edits keep the parent's mask
    assert edited.shape == images.shape


def test_batches_without_masks_are_refused(tmp_path):
    ae = create_generator("kl_autoencoder", image_size=16, **AE)
    model = create_generator("ldm", autoencoder_path=str(ae.save_pretrained(tmp_path / "ae")), **LDM)
    with pytest.raises(ValueError, match="needs batches with a 'mask' entry"):
        model.to_diffusion_space({"image": torch.zeros(2, 1, 16, 16)})
    with pytest.raises(ValueError, match="mask_downsampling"):
        create_generator("ldm", autoencoder_path=str(tmp_path / "ae"), mask_downsampling="nearest", **LDM)


def test_gradient_checkpointing_of_the_latent_unet_keeps_its_gradients(tmp_path):
    ae = create_generator("kl_autoencoder", spatial_dims=3, image_size=[8, 12, 16], **AE)
    folder = str(ae.save_pretrained(tmp_path / "ae"))
    batch = {"image": torch.rand(2, 1, 8, 12, 16) * 2 - 1, "mask": (torch.rand(2, 1, 8, 12, 16) > 0.5).float()}
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = create_generator("ldm", autoencoder_path=folder, gradient_checkpointing=checkpointing, **LDM)
        assert model.unet.gradient_checkpointing is checkpointing
        torch.manual_seed(1)  # the same noise and timesteps
        model._shared_step(batch, "val").backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.unet.parameters()]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
