"""DiffAugment: shapes, differentiability, seeding, and what each transform does, in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from lightning_medaug.data import make_phantoms
from lightning_medaug.generative.diffaugment import DiffAugment, diff_augment

SHAPES = {2: (6, 1, 16, 16), 3: (4, 1, 8, 8, 8)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_are_preserved_and_images_change(spatial_dims):
    images = make_phantoms(SHAPES[spatial_dims][0], spatial_dims, SHAPES[spatial_dims][-1])[0]
    for policy in ("color", "translation", "cutout", "color,translation,cutout"):
        out = diff_augment(images, policy, torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.dtype == images.dtype
        assert not torch.equal(out, images), policy
    assert torch.equal(diff_augment(images, ""), images)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradients_flow_to_the_input(spatial_dims):
    x = torch.randn(SHAPES[spatial_dims], requires_grad=True)
    DiffAugment()(x, torch.Generator().manual_seed(0)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_same_seed_gives_the_same_transform_to_real_and_fake(spatial_dims):
    real, fake = torch.randn(SHAPES[spatial_dims]), torch.randn(SHAPES[spatial_dims])
    augment = DiffAugment("translation,cutout")
    # A geometric transform is linear in the image: T(real) - T(fake) == T'(real - fake) with zero fill.
    out_real = augment(real, torch.Generator().manual_seed(3))
    out_fake = augment(fake, torch.Generator().manual_seed(3))
    diff = DiffAugment("translation,cutout", fill=0.0)(real - fake, torch.Generator().manual_seed(3))
    assert torch.allclose(out_real - out_fake, diff, atol=1e-6)
    assert torch.equal(augment(real, torch.Generator().manual_seed(3)), out_real)
    assert not torch.equal(augment(real, torch.Generator().manual_seed(4)), out_real)


def test_translation_shifts_by_whole_pixels_and_fills_background():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    out = diff_augment(x, "translation", torch.Generator().manual_seed(1), translation_ratio=0.25)
    assert out.max() == 1.0 and (out == 1.0).sum() == 1  # moved, not blurred
    assert out.min() == -1.0  # pixels shifted in take the background fill


def test_cutout_sets_a_box_to_the_fill_value():
    x = torch.ones(2, 1, 8, 8, 8)
    out = diff_augment(x, "cutout", torch.Generator().manual_seed(0), cutout_ratio=0.5)
    removed = (out == -1.0).flatten(1).sum(1)
    assert ((removed > 0) & (removed <= 4**3)).all()


def test_color_keeps_geometry_and_is_per_sample():
    x = torch.linspace(-1, 1, 16).repeat(2, 1, 16, 1)
    out = diff_augment(x, "color", torch.Generator().manual_seed(0))
    # Brightness and contrast are affine per sample: the ordering of pixel values is kept.
    assert torch.equal(out[0].flatten().argsort(stable=True), x[0].flatten().argsort(stable=True))
    assert not torch.allclose(out[0], out[1])


def test_unknown_policy_and_bad_ratios_raise():
    with pytest.raises(ValueError, match="policy"):
        DiffAugment("color,rotate")
    with pytest.raises(ValueError, match="translation_ratio"):
        DiffAugment(translation_ratio=0.6)
    with pytest.raises(ValueError, match="cutout_ratio"):
        DiffAugment(cutout_ratio=0.0)
