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


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_translation_shifts_by_whole_pixels_and_fills_background(spatial_dims):
    x = torch.zeros((1, 1) + (8,) * spatial_dims)
    x[(0, 0, 3, 4, 2)[: spatial_dims + 2]] = 1.0
    out = diff_augment(x, "translation", torch.Generator().manual_seed(1), translation_ratio=0.25)
    assert out.max() == 1.0 and (out == 1.0).sum() == 1  # moved, not blurred
    assert out.min() == -1.0  # pixels shifted in take the background fill
    shift = (out == 1.0).nonzero()[0, 2:] - torch.tensor([3, 4, 2][:spatial_dims])
    assert shift.abs().max() <= 2  # at most a quarter of each axis


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


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_color_does_not_clamp_so_every_pixel_keeps_its_gradient(spatial_dims):
    # kornia clamps colour ops to [0, 1]; DiffAugment does not, or saturated pixels would get no gradient.
    ramp = torch.linspace(-1, 1, 8**spatial_dims).reshape((1, 1) + (8,) * spatial_dims)
    x = ramp.repeat(16, 1, *[1] * spatial_dims).requires_grad_(True)
    out = diff_augment(x, "color", torch.Generator().manual_seed(0))
    assert out.min() < -1.0 and out.max() > 1.0
    out.sum().backward()
    assert (x.grad != 0).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_color_keeps_grey_rgb_grey_and_changes_the_spread_of_coloured_rgb(spatial_dims):
    size = (4,) * spatial_dims
    grey = torch.rand((6, 1) + size).repeat(1, 3, *[1] * spatial_dims) * 2 - 1
    out = diff_augment(grey, "color", torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 0], out[:, 2], atol=1e-5)
    coloured = torch.rand((6, 3) + size) * 2 - 1
    out = diff_augment(coloured, "color", torch.Generator().manual_seed(0))
    spread = (out.std(1) / coloured.std(1)).flatten(1)  # saturation and contrast scale the channel spread
    assert not torch.allclose(spread[0], spread[1], rtol=1e-2)


def test_unseeded_calls_draw_afresh_and_seeded_calls_leave_the_global_rng_alone():
    x = torch.randn(SHAPES[2])
    augment = DiffAugment()
    assert not torch.equal(augment(x), augment(x))  # reals and fakes get independent draws
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), expected)


def test_has_no_state_so_gan_checkpoints_keep_their_keys():
    assert DiffAugment().state_dict() == {}


def test_unknown_policy_and_bad_ratios_raise():
    with pytest.raises(ValueError, match="policy"):
        DiffAugment("color,rotate")
    with pytest.raises(ValueError, match="translation_ratio"):
        DiffAugment(translation_ratio=0.6)
    with pytest.raises(ValueError, match="cutout_ratio"):
        DiffAugment(cutout_ratio=0.0)
