"""The KL autoencoder (latent diffusion's first stage) with its patch discriminator, trained by a real Trainer."""

from __future__ import annotations

import pytest
import torch
from generative_testing import assert_exports_round_trip, phantom_data, quiet_trainer, seeded

from lightning_medaug.generative.kl_autoencoder import (
    KLAutoencoder,
    build_perceptual_loss,
    patch_discriminator_layers,
)
from lightning_medaug.generative.shapes import random_patches
from lightning_medaug.registry import create_generator

TINY = {"channels": (8, 16), "norm_num_groups": 4, "latent_channels": 2, "discriminator_channels": 8}


def _discriminator_weights(model: KLAutoencoder) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.discriminator.parameters()]


def test_reconstructs_better_and_the_adversary_starts_on_time(tmp_path):
    torch.manual_seed(0)
    model = create_generator("kl_autoencoder", image_size=16, lr=2e-3, adversarial_start_step=20, **TINY)
    data = phantom_data(2, 16, num_train=32, batch_size=8)
    data.setup()
    batch = next(iter(data.train_dataloader()))["image"]
    with torch.no_grad():
        before = (model(batch) - batch).abs().mean().item()
    d_start = _discriminator_weights(model)
    quiet_trainer(20, limit_val_batches=0).fit(model, data)  # 20 batches of the autoencoder alone
    assert all(torch.equal(a, b) for a, b in zip(d_start, _discriminator_weights(model)))
    model.eval()
    with torch.no_grad():
        after = (model(batch) - batch).abs().mean().item()
    assert after < 0.7 * before
    trainer = quiet_trainer(26, limit_val_batches=0)  # 3 more batches, each stepping both networks
    trainer.fit(model, data)
    assert not all(torch.equal(a, b) for a, b in zip(d_start, _discriminator_weights(model)))
    metrics = trainer.callback_metrics
    assert {"train/loss_d", "train/adv_g", "train/recon", "train/kl"} <= set(metrics)
    assert torch.isfinite(metrics["train/loss"])

    lean = assert_exports_round_trip(model, tmp_path)  # the discriminator is training-only
    assert lean.untrained_parts and all(k.startswith("discriminator.") for k in lean.untrained_parts)
    z = lean.encode(batch[:2])
    assert z.shape == (2, *lean.latent_shape) == (2, 2, 8, 8)
    assert lean.decode(z).shape == (2, 1, 16, 16)


def test_3d_non_cubic_with_gradient_checkpointing_matches_without():
    size = (8, 12, 16)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = create_generator("kl_autoencoder", spatial_dims=3, image_size=list(size), adversarial_weight=0,
                                 gradient_checkpointing=checkpointing, **TINY)
        assert model.discriminator is None and model.autoencoder.use_checkpoint is checkpointing
        x = torch.rand(2, 1, *size) * 2 - 1
        model.loss_terms(x, None)["recon"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.autoencoder.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    model.eval()
    assert model.sample(2, generator=seeded(0)).shape == (2, 1, *size)


def test_patch_discriminator_depth_fits_the_image():
    assert patch_discriminator_layers((256, 256), None) == 3
    assert patch_discriminator_layers((8, 12, 16), None) == 1
    assert patch_discriminator_layers((256, 256), 4) == 4
    with pytest.raises(ValueError, match="at least 24"):
        patch_discriminator_layers((16, 64), 3)
    with pytest.raises(ValueError, match="too small"):
        patch_discriminator_layers((5, 64), None)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="perceptual_network"):
        create_generator("kl_autoencoder", image_size=16, perceptual_network="resnet", **TINY)
    with pytest.raises(ValueError, match="adversarial_weight"):
        create_generator("kl_autoencoder", image_size=16, adversarial_weight=-1, **TINY)
    with pytest.raises(ValueError, match="is a 3D network"):  # refused before any download is tried
        build_perceptual_loss(2, "medicalnet_resnet10_23datasets")


def test_trains_on_random_patches_and_still_encodes_whole_volumes():
    torch.manual_seed(0)
    size, patch = (8, 12, 16), (8, 8, 8)
    model = create_generator("kl_autoencoder", spatial_dims=3, image_size=list(size), patch_size=8, **TINY)
    seen = []
    model.autoencoder.encoder.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[2:])))
    data = phantom_data(3, size, num_train=4, batch_size=2)
    quiet_trainer(4, limit_val_batches=1, num_sanity_val_steps=0, max_epochs=1).fit(model, data)
    assert seen[:2] == [patch, patch] and seen[-1] == size  # training on patches, validation on whole volumes
    model.eval()
    x = torch.rand(2, 1, *size) * 2 - 1
    assert model.encode(x).shape == (2, *model.latent_shape) == (2, 2, 4, 6, 8)
    with pytest.raises(ValueError, match="must not exceed image_size"):
        create_generator("kl_autoencoder", spatial_dims=3, image_size=list(size), patch_size=[8, 16, 8], **TINY)


def test_random_patches_are_blocks_of_their_sample():
    x = torch.arange(2 * 6 * 10, dtype=torch.float32).reshape(2, 1, 6, 10)
    patches = random_patches(x, (3, 4), generator=seeded(0))
    assert patches.shape == (2, 1, 3, 4)
    for i in range(2):
        row, col = divmod(int(patches[i, 0, 0, 0]) - 60 * i, 10)
        assert torch.equal(patches[i], x[i, :, row:row + 3, col:col + 4])
