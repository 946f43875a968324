"""Adaptive discriminator augmentation: the p controller, and augmentation shape/gradients in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from lightning_medaug.data import make_phantoms
from lightning_medaug.generative.ada import AdaptiveAugment

SHAPES = {2: (8, 1, 16, 16), 3: (4, 1, 8, 8, 8)}


def test_p_rises_when_the_discriminator_overfits_and_falls_otherwise():
    # 16 reals per step, 4 steps per adjustment, 0 -> 1 over 640 images: each adjustment moves p by 0.1.
    ada = AdaptiveAugment(target=0.6, interval=4, speed_kimg=0.64)
    confident = torch.full((16,), 3.0)  # r_t = 1 > 0.6: D is sure of every real
    adjusted = [ada.observe(confident) for _ in range(8)]
    assert adjusted == [False, False, False, True] * 2
    assert float(ada.p) == pytest.approx(0.2) and float(ada.last_rt) == 1.0
    mixed = torch.tensor([1.0] * 6 + [-1.0] * 10)  # r_t = -0.25 < 0.6: no overfitting
    for _ in range(4):
        ada.observe(mixed)
    assert float(ada.p) == pytest.approx(0.1) and float(ada.last_rt) == pytest.approx(-0.25)
    for _ in range(40):
        ada.observe(mixed)
    assert float(ada.p) == 0.0  # clamped at 0
    for _ in range(400):
        ada.observe(confident)
    assert float(ada.p) == 1.0  # clamped at max_p


def test_p_stays_below_max_p_and_lives_in_the_state_dict():
    ada = AdaptiveAugment(interval=1, speed_kimg=0.01, max_p=0.7)
    ada.observe(torch.ones(16))
    assert float(ada.p) == pytest.approx(0.7)
    state = ada.state_dict()
    assert set(state) == {"p", "sign_sum", "num_seen", "num_calls", "last_rt"}  # nothing from the transforms
    fresh = AdaptiveAugment()
    fresh.load_state_dict(state)
    assert float(fresh.p) == pytest.approx(0.7)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_augment_keeps_shape_is_differentiable_and_follows_p(spatial_dims):
    images = make_phantoms(SHAPES[spatial_dims][0], spatial_dims, SHAPES[spatial_dims][-1])[0]
    assert torch.equal(AdaptiveAugment(initial_p=0.0)(images), images)  # p = 0: the identity
    always = AdaptiveAugment(initial_p=1.0)
    out = always(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert all(not torch.equal(o, i) for o, i in zip(out, images))  # p = 1: every sample changes
    assert torch.equal(always(images, torch.Generator().manual_seed(0)), out)  # seeded
    x = torch.randn(SHAPES[spatial_dims], requires_grad=True)
    always(x, torch.Generator().manual_seed(1)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("policy", ["cutout", "translation"])
def test_each_transform_hits_about_a_fraction_p_of_the_samples(policy):
    images = make_phantoms(400, 2, 16)[0]
    out = AdaptiveAugment(policy, initial_p=0.3)(images, torch.Generator().manual_seed(0))
    changed = (out != images).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.4
    ada = AdaptiveAugment(policy, initial_p=0.3)
    ada.p.fill_(0.9)  # p moves during training: the next call follows it
    changed = (ada(images) != images).flatten(1).any(1).float().mean()
    assert 0.75 < changed < 0.95


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="target"):
        AdaptiveAugment(target=0.0)
    with pytest.raises(ValueError, match="interval"):
        AdaptiveAugment(interval=0)
    with pytest.raises(ValueError, match="speed_kimg"):
        AdaptiveAugment(speed_kimg=0)
    with pytest.raises(ValueError, match="initial_p"):
        AdaptiveAugment(initial_p=0.9, max_p=0.5)
    with pytest.raises(ValueError, match="DiffAugment policy"):
        AdaptiveAugment("flip")
