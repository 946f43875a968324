"""ProGAN: the growing schedule, fade-in continuity, real Trainer runs on 2D/3D phantoms, the contract."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from generative_testing import RecordRealLogits, assert_distinct_samples, phantom_data, seeded
from generative_testing import quiet_trainer as trainer

from lightning_medaug.generative import load_generator
from lightning_medaug.generative.progan import ProGAN
from lightning_medaug.registry import create_generator, list_generators

SIZE = {2: 16, 3: 8}


def tiny_kwargs(spatial_dims: int, **overrides) -> dict:
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZE[spatial_dims], "latent_dim": 16,
              "channel_base": 64, "channel_max": 16, "stage_batches": 6, "lr": 3e-3}
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="module", params=[(2, 2), (3, 0)], ids=["2d-conditional", "3d-unconditional"])
def trained(request):
    """A model grown through every level (two optimiser steps per batch) and its initial samples."""
    spatial_dims, num_classes = request.param
    L.seed_everything(0)
    model = ProGAN(**tiny_kwargs(spatial_dims, num_classes=num_classes))
    initial = model.sample(64, generator=seeded(0))
    fit = trainer(2 * (model.total_batches + 6))
    data = phantom_data(spatial_dims, SIZE[spatial_dims])
    fit.fit(model, data)
    return model, data, initial, fit


def test_schedule_grows_one_level_at_a_time():
    model = ProGAN(**tiny_kwargs(2, image_size=28, stage_batches=10))
    assert model.generator.resolutions == [(7, 7), (14, 14), (28, 28)] and model.total_batches == 50
    assert model.schedule(0) == (0, 1.0) and model.schedule(9) == (0, 1.0)
    assert model.schedule(10) == (1, 0.0) and model.schedule(15) == (1, 0.5)
    assert model.schedule(20) == (1, 1.0) and model.schedule(35) == (2, 0.5)
    assert model.schedule(50) == (2, 1.0) and model.schedule(10_000) == (2, 1.0)
    assert model.schedule() == (0, 1.0)  # nothing trained yet


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_new_level_starts_as_the_upsampled_level_below(spatial_dims):
    """At alpha = 0 the grown networks compute exactly what the smaller ones did (the fade-in's point)."""
    torch.manual_seed(0)
    model = ProGAN(**tiny_kwargs(spatial_dims, num_classes=2, image_size=16))  # levels 4, 8, 16
    g, d = model.generator, model.discriminator
    z, labels = torch.randn(4, 16), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        coarse = g(z, labels, level=1, alpha=1.0)
        assert torch.allclose(g(z, labels, level=2, alpha=0.0), F.interpolate(coarse, scale_factor=2.0), atol=1e-6)
        assert not torch.allclose(g(z, labels, level=2, alpha=1.0), F.interpolate(coarse, scale_factor=2.0))
        x = torch.randn(4, 1, *([16] * spatial_dims))
        pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
        assert torch.allclose(d(x, labels, level=2, alpha=0.0), d(pool(x, 2), labels, level=1, alpha=1.0), atol=1e-5)
    with pytest.raises(ValueError, match="level 1 takes images of side"):
        d(x, labels, level=1)
    with pytest.raises(ValueError, match="alpha"):
        g(z, labels, level=1, alpha=1.5)


def test_training_grows_to_full_size_and_moves_samples_toward_the_data(trained):
    model, data, initial, fit = trained
    assert model.schedule() == (model.num_levels - 1, 1.0) and int(model.batches_seen) >= model.total_batches
    real = data.datasets["train"].images
    samples = model.sample(64, generator=seeded(0))
    assert abs(samples.mean() - real.mean()) < 0.6 * abs(initial.mean() - real.mean())
    metrics = fit.callback_metrics
    for key in ("train/loss_g", "train/loss_d", "train/loss", "train/gp"):
        assert torch.isfinite(metrics[key]), key
    assert "train/rt" not in metrics  # the WGAN critic's sign means nothing
    assert float(metrics["train/level"]) == model.num_levels - 1 and float(metrics["train/alpha"]) == 1.0


def test_sample_contract(trained):
    model, *_ = trained
    a, b, c = (model.sample(5, generator=seeded(seed)) for seed in (1, 1, 2))
    assert a.shape == (5, *model.image_shape) and a.dtype == torch.float32
    assert_distinct_samples(a)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="mask"):
        model.sample(2, masks=torch.zeros(2, *model.mask_shape))


def test_save_pretrained_keeps_the_level_and_the_samples(trained, tmp_path):
    model, *_ = trained
    model.save_pretrained(tmp_path / "progan")
    loaded = load_generator(tmp_path / "progan")
    assert type(loaded) is ProGAN and loaded.hparams == model.hparams
    assert int(loaded.batches_seen) == int(model.batches_seen)
    assert torch.equal(model.sample(6, generator=seeded(5)), loaded.sample(6, generator=seeded(5)))


def test_an_early_model_samples_at_its_level_upsampled():
    model = create_generator("progan", **tiny_kwargs(2))
    images = model.sample(3, generator=seeded(0))
    assert images.shape == (3, 1, 16, 16)
    # level 0 is a 4x4 grid: every 4x4 block of the upsampled image holds one value
    assert torch.equal(images, images[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2))
    assert "progan" in list_generators()


def test_trains_under_bf16_mixed_precision_with_diffaugment():
    model = ProGAN(**tiny_kwargs(2, diffaugment="color,translation,cutout", n_critic=2))
    fit = trainer(6, precision="bf16-mixed")
    fit.fit(model, phantom_data(2, SIZE[2]))
    assert int(model.batches_seen) == 4  # 4 critic steps + 2 generator steps
    for key in ("train/loss", "train/loss_d", "train/gp"):
        assert torch.isfinite(fit.callback_metrics[key]), key


def test_logistic_loss_with_r1_trains():
    model = ProGAN(**tiny_kwargs(2, loss="logistic", r1_gamma=0.1))
    real_logits = RecordRealLogits()
    fit = trainer(8, callbacks=[real_logits])
    fit.fit(model, phantom_data(2, SIZE[2]))
    metrics = fit.callback_metrics
    assert float(metrics["train/r1"]) > 0 and "train/gp" not in metrics
    # E[sign D(real)] over the epoch's reals (only the logistic loss has a zero point)
    assert float(metrics["train/rt"]) == pytest.approx(real_logits.last_epoch_rt(), abs=1e-6)
    # softplus losses are positive, unlike the Wasserstein estimate
    assert float(metrics["train/loss_d"]) > 0 and float(metrics["train/loss_g"]) > 0


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="image_size=7"):
        ProGAN(image_size=7)
    with pytest.raises(ValueError, match="stage_batches"):
        ProGAN(image_size=16, stage_batches=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        ProGAN(image_size=16, loss="hinge")
    with pytest.raises(ValueError, match="gp_weight"):
        ProGAN(image_size=16, gp_weight=-1.0)
    with pytest.raises(ValueError, match="diffaugment|policy"):
        ProGAN(image_size=16, diffaugment="rotate")
    with pytest.raises(ValueError, match="class-conditional"):
        ProGAN(**tiny_kwargs(2, num_classes=2)).generator(torch.randn(2, 16))
