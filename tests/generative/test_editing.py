"""Diffusion edits of real images (SDEdit / DA-Fusion / Diff-Mix) by a DDPM trained briefly on phantoms."""

import math

import pytest
import torch
from generative_testing import quiet_trainer, seeded

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.generative.editing import edit_steps, soft_labels
from lightning_medaug.registry import create_generator

TINY = {"channels": (16, 32), "norm_num_groups": 8, "lr": 3e-3, "beta_schedule": "squaredcos_cap_v2",
        "num_inference_steps": 20}


@pytest.fixture(scope="module")
def trained():
    """A class-conditional 8-px DDPM after 100 steps (enough for its samples to match the data's
    statistics, see test_diffusion) and 32 real phantoms with their labels."""
    torch.manual_seed(0)
    model = DDPM(image_size=8, num_classes=2, **TINY)
    data = PhantomDataModule(image_size=8, num_classes=2, num_train=64, batch_size=32)
    quiet_trainer(100, limit_val_batches=0).fit(model, data)
    train = data.datasets["train"]
    return model.eval(), train.images[:32], train.labels[:32]


def test_strength_near_zero_keeps_the_image_and_one_redraws_it(trained):
    model, images, labels = trained
    untouched = model.edit(images, 0.01, labels)  # int(20 * 0.01) = 0 steps: nothing is noised
    assert torch.equal(untouched, images.clamp(-1, 1))
    light = model.edit(images, 0.05, labels, generator=seeded(0))  # one step, from t = 49 of 1000
    full = model.edit(images, 1.0, labels, generator=seeded(0))
    assert light.shape == full.shape == images.shape
    assert (light - images).abs().mean() < 0.1
    assert (full - images).abs().mean() > 3 * (light - images).abs().mean()
    # from t = T - 1 an edit is a fresh sample: its statistics are those of sample() and of the data
    drawn = model.sample(32, labels=labels, generator=seeded(1))
    assert abs(full.mean().item() - drawn.mean().item()) < 0.15
    assert abs(full.std().item() - drawn.std().item()) < 0.1
    assert abs(full.std().item() - images.std().item()) < 0.1


def test_more_strength_moves_further_from_the_input(trained):
    model, images, labels = trained
    distances = [(model.edit(images, s, labels, generator=seeded(0)) - images).abs().mean().item()
                 for s in (0.25, 0.5, 1.0)]
    assert distances[0] < distances[1] < distances[2]


def test_edits_are_seeded_and_batched(trained):
    model, images, labels = trained
    kwargs = {"strength": 0.5, "labels": labels[:6], "num_inference_steps": 6}
    a = model.edit(images[:6], generator=seeded(3), **kwargs)
    b = model.edit(images[:6], generator=seeded(3), **kwargs)
    c = model.edit(images[:6], generator=seeded(4), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    edits = [model.edit(images[:5], 0.5, labels[:5], sampler=sampler, batch_size=2, num_inference_steps=6,
                        generator=seeded(5)) for sampler in ("ddpm", "ddim", "dpmsolver++")]
    assert all(x.shape == (5, 1, 8, 8) and not torch.equal(x, images[:5]) for x in edits)
    # one seed, three samplers: three different edits (each sampler is the one used)
    assert not any(torch.equal(edits[i], edits[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    weight = torch.ones(1, requires_grad=True)  # not an inference tensor
    (a * weight).sum().backward()
    assert weight.grad is not None


def test_counterfactual_edits_and_their_soft_labels(trained):
    model, images, labels = trained
    targets = 1 - labels
    same = model.edit(images[:8], 0.75, labels[:8], guidance_scale=3.0, generator=seeded(0))
    other = model.edit(images[:8], 0.75, labels[:8], target_labels=targets[:8], guidance_scale=3.0,
                       generator=seeded(0))
    assert other.shape == images[:8].shape and not torch.allclose(same, other)
    soft = model.edit_soft_labels(labels[:8], targets[:8], 0.75)
    expected = torch.stack([torch.where(torch.arange(2) == y, 0.25, 0.75) for y in labels[:8]])
    assert torch.allclose(soft, expected) and torch.allclose(soft.sum(1), torch.ones(8))
    assert torch.equal(soft_labels(torch.tensor([1]), torch.tensor([1]), 0.5, 3), torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.allclose(soft_labels(torch.tensor([0]), torch.tensor([1]), 0.25, 2, gamma=0.5),
                          torch.tensor([[0.5, 0.5]]))


def test_bad_arguments_are_refused(trained):
    model, images, labels = trained
    for strength in (0, -0.1, 1.5, math.nan, "half"):
        with pytest.raises(ValueError, match="strength"):
            model.edit(images[:2], strength, labels[:2])
    with pytest.raises(ValueError, match="pass the images' labels"):
        model.edit(images[:2], 0.5)
    with pytest.raises(ValueError, match="labels must lie in"):
        model.edit(images[:2], 0.5, labels[:2], target_labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="images must have shape"):
        model.edit(images[:2, :, :4], 0.5, labels[:2])
    with pytest.raises(ValueError, match="gamma"):
        soft_labels(labels[:2], labels[:2], 0.5, 2, gamma=0)
    assert [edit_steps(s, 10) for s in (0.05, 0.3, 0.5, 1.0)] == [0, 3, 5, 10]


def test_3d_unconditional_edit():
    model = create_generator("ddpm", spatial_dims=3, image_size=9, channels=(8, 16), norm_num_groups=8)
    volumes = torch.rand(2, 1, 9, 9, 9) * 2 - 1
    x = model.edit(volumes, 0.5, num_inference_steps=4, generator=seeded(0))
    assert x.shape == volumes.shape and not torch.equal(x, volumes)
    assert torch.equal(x, model.edit(volumes, 0.5, num_inference_steps=4, generator=seeded(0)))
    assert not torch.equal(x, model.edit(volumes, 0.5, num_inference_steps=4, generator=seeded(1)))  # noise added
    with pytest.raises(ValueError, match="unconditional"):
        model.edit(volumes, 0.5, target_labels=torch.tensor([0, 1]))


def test_latent_diffusion_edits_in_latent_space(tmp_path):
    vae = create_generator("vae", image_size=16, latent_channels=2, channels=(8, 16), norm_num_groups=8)
    ldm = create_generator("ldm", autoencoder_path=str(vae.save_pretrained(tmp_path / "vae")), num_classes=2,
                           channels=(16, 32), norm_num_groups=8, num_inference_steps=4)
    images, labels = torch.rand(3, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 1])
    x = ldm.edit(images, 0.5, labels, target_labels=1 - labels, generator=seeded(0))
    assert x.shape == images.shape
    # the noise added in latent space reaches the edit: another seed, another edit
    assert not torch.equal(x, ldm.edit(images, 0.5, labels, target_labels=1 - labels, generator=seeded(1)))
    # no step: the image only makes the round trip through the autoencoder
    assert torch.allclose(ldm.edit(images, 0.1, labels), ldm.autoencoder.decode(
        ldm.autoencoder.encode(images, labels), labels).clamp(-1, 1), atol=1e-5)
