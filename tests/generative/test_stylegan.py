"""StyleGAN2 + ADA: real Trainer runs on tiny 2D/3D phantoms, the networks' maths, the contract."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from generative_testing import (
    RecordRealLogits,
    assert_distinct_samples,
    assert_exports_round_trip,
    phantom_data,
    seeded,
)
from generative_testing import quiet_trainer as trainer

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.stylegan import StyleGAN2
from lightning_medaug.generative.stylegan_networks import (
    ModulatedConv,
    StyleGAN2Discriminator,
    minibatch_stddev,
)
from lightning_medaug.registry import create_generator, list_generators

SIZE = {2: 16, 3: 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_kwargs(spatial_dims: int, **overrides) -> dict:
    # Short lazy intervals and a fast ADA so that R1, path length and p all act within 40 batches.
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZE[spatial_dims], "latent_dim": 16, "w_dim": 16,
              "mapping_layers": 2, "channel_base": 64, "channel_max": 16, "lr_g": 5e-3, "lr_d": 5e-3,
              "r1_interval": 2, "pl_interval": 2, "ada_interval": 1, "ada_speed_kimg": 0.5}
    kwargs.update(overrides)
    return kwargs


def phantoms(spatial_dims: int) -> PhantomDataModule:
    return phantom_data(spatial_dims, SIZE[spatial_dims])


@pytest.fixture(scope="module", params=[(2, 2), (3, 0)], ids=["2d-conditional", "3d-unconditional"])
def trained(request):
    """A model trained for 40 batches (global_step counts D and G steps) and its initial samples."""
    spatial_dims, num_classes = request.param
    L.seed_everything(0)
    model = StyleGAN2(**tiny_kwargs(spatial_dims, num_classes=num_classes))
    data = phantoms(spatial_dims)
    data.setup()
    initial = model.sample(64, generator=seeded(0))
    real_logits = RecordRealLogits()
    fit = trainer(80, callbacks=[real_logits])
    fit.fit(model, data)
    return model, data, initial, fit, real_logits


def test_training_moves_samples_toward_the_data(trained):
    model, data, initial, fit, real_logits = trained
    real = data.datasets["train"].images
    samples = model.sample(64, generator=seeded(0))
    # At init the samples sit near 0 with a wide spread; phantoms are mostly dark background (mean ~ -0.7).
    assert abs(samples.mean() - real.mean()) < 0.6 * abs(initial.mean() - real.mean())
    assert abs(samples.std() - real.std()) < abs(initial.std() - real.std())
    metrics = fit.callback_metrics
    for key in ("train/loss_g", "train/loss_d", "train/loss", "train/r1", "train/pl", "train/ada_p"):
        assert torch.isfinite(metrics[key]), key
    assert metrics["train/loss"] == metrics["train/loss_g"]
    assert model.pl_mean > 0  # the path-length penalty ran and tracked its running mean
    # ADA's rule replayed on the reals' logits of every D step (interval 1): p moves by
    # sign(r_t - 0.6) * 16 / 500 per batch of 16 and stays within [0, max_p = 1]
    p, rts = torch.tensor(0.0), []
    for logits in real_logits.batches:
        rts.append(logits.double().sign().mean())
        p = (p + (torch.sign(rts[-1] - 0.6) * logits.numel() / 500.0).float()).clamp(0.0, 1.0)
    assert len(rts) == 40 and float(p) > 0.0  # p left its initial 0: the check below sees the steps
    assert float(model.augment.p) == pytest.approx(float(p), abs=1e-6)
    assert float(model.augment.last_rt) == pytest.approx(float(rts[-1]), abs=1e-6)


def test_sample_contract(trained):
    model, *_ = trained
    a = model.sample(5, generator=seeded(1))
    b = model.sample(5, generator=seeded(1))
    c = model.sample(5, generator=seeded(2))
    assert a.shape == (5, *model.image_shape) and a.dtype == torch.float32
    assert_distinct_samples(a)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.hparams.spatial_dims == model.spatial_dims and "num_classes" in model.hparams
    with pytest.raises(ValueError, match="mask"):
        model.sample(2, masks=torch.zeros(2, *model.mask_shape))
    with pytest.raises(ValueError, match="truncation_psi"):
        model.sample(2, truncation_psi=1.5)


def test_truncation_pulls_samples_together(trained):
    model, *_ = trained
    labels = torch.zeros(16, dtype=torch.long) if model.num_classes else None
    free = model.sample(16, labels=labels, generator=seeded(4))
    truncated = model.sample(16, labels=labels, generator=seeded(4), truncation_psi=0.0)
    # psi = 0: every sample uses the mean w; only the noise inputs still differ between samples.
    assert truncated.std(0).mean() < 0.5 * free.std(0).mean()


def test_sample_uses_the_ema_generator(trained):
    model, *_ = trained
    labels = torch.tensor([0, 1, 0, 1]) if model.num_classes else None
    gen = seeded(3)
    z = torch.randn(4, model.hparams.latent_dim, generator=gen)
    model.ema.module.eval()
    model.generator.eval()
    with torch.no_grad():
        expected = model.ema.module(z, labels, 1.0, gen).clamp(-1, 1)
        raw = model.generator(z, labels, 1.0, seeded(3)).clamp(-1, 1)
    model.generator.train()
    got = model.sample(4, labels=labels, generator=seeded(3))
    assert torch.allclose(got, expected) and not torch.allclose(got, raw)


def test_labels_are_respected_when_conditional():
    model = StyleGAN2(**tiny_kwargs(2, num_classes=2))
    zeros = model.sample(4, labels=torch.zeros(4, dtype=torch.long), generator=seeded(0))
    ones = model.sample(4, labels=torch.ones(4, dtype=torch.long), generator=seeded(0))
    assert not torch.allclose(zeros, ones)  # same z and noise, different label embedding
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        StyleGAN2(**tiny_kwargs(2)).sample(2, labels=torch.tensor([0, 1]))


def test_save_pretrained_round_trip_is_bit_exact(trained, tmp_path):
    model, *_ = trained
    loaded = assert_exports_round_trip(model, tmp_path / "stylegan2")
    assert type(loaded) is StyleGAN2 and loaded.hparams == model.hparams
    assert torch.equal(loaded.augment.p, model.augment.p) and torch.equal(loaded.pl_mean, model.pl_mean)
    assert torch.equal(model.sample(6, generator=seeded(5)), loaded.sample(6, generator=seeded(5)))


def test_lightning_checkpoint_round_trip(trained, tmp_path):
    model, _, _, fit, _ = trained
    fit.save_checkpoint(tmp_path / "stylegan.ckpt")
    restored = StyleGAN2.load_from_checkpoint(tmp_path / "stylegan.ckpt")
    assert "augment.p" in torch.load(tmp_path / "stylegan.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(restored.augment.p, model.augment.p)
    assert torch.equal(model.sample(3, generator=seeded(7)), restored.sample(3, generator=seeded(7)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_modulated_conv_equals_one_convolution_per_sample(spatial_dims):
    """The grouped convolution must equal convolving each sample with its own modulated, demodulated weight."""
    torch.manual_seed(0)
    layer = ModulatedConv(spatial_dims, 3, 5, 3, w_dim=4, noise=False, activate=False)
    x, w = torch.randn(2, 3, *([6] * spatial_dims)), torch.randn(2, 4)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    expected = []
    for i in range(2):
        styles = layer.affine(w[i : i + 1])[0]
        weight = layer.weight * layer.gain * styles.view(1, -1, *([1] * spatial_dims))
        weight = weight / weight.flatten(1).norm(dim=1).view(-1, *([1] * (spatial_dims + 1)))
        expected.append(conv(x[i : i + 1], weight, layer.bias, padding=1))
    assert torch.allclose(layer(x, w), torch.cat(expected), atol=1e-5)
    # Demodulation makes the output independent of a global scale of the style.
    with torch.no_grad():
        layer.affine.bias.mul_(3.0)
        layer.affine.weight.mul_(3.0)
    assert torch.allclose(layer(x, w), torch.cat(expected), atol=1e-4)


def test_discriminator_minibatch_stddev_and_non_power_of_two_sizes():
    x = torch.randn(6, 2, 4, 4)
    out = minibatch_stddev(x, 4)  # 6 samples: groups of gcd(6, 4) = 2
    assert out.shape == (6, 3, 4, 4) and torch.equal(out[:, :2], x)
    assert not torch.allclose(out[0, 2], out[1, 2])  # samples 0 and 1 lie in different groups
    assert torch.allclose(out[0, 2], out[3, 2])  # samples 0 and 3 form one group
    disc = StyleGAN2Discriminator(3, 1, 12, channel_base=64, channel_max=8, num_classes=3)
    assert disc(torch.randn(4, 1, 12, 12, 12), torch.tensor([0, 1, 2, 0])).shape == (4,)
    # 28 = 7 x 2 x 2: generated at 28 directly, no resizing.
    model = create_generator("stylegan2", **tiny_kwargs(2, image_size=28, num_classes=3))
    assert model.sample(3, labels=torch.tensor([0, 1, 2])).shape == (3, 1, 28, 28)
    assert model.generator.const.shape[-1] == 7
    assert "stylegan2" in list_generators()


def test_trains_under_bf16_mixed_precision_without_regularisers():
    model = StyleGAN2(**tiny_kwargs(2, r1_interval=1, pl_interval=1, ada_policy="", style_mixing_prob=0.0))
    fit = trainer(4, precision="bf16-mixed")
    fit.fit(model, phantoms(2))
    assert fit.global_step == 4
    for key in ("train/loss", "train/loss_d", "train/r1", "train/pl"):
        assert torch.isfinite(fit.callback_metrics[key]), key
    assert float(model.augment.p) == 0.0  # no policy: nothing to adapt, p stays at its start


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="image_size=7"):
        StyleGAN2(image_size=7)
    with pytest.raises(ValueError, match="r1_gamma"):
        StyleGAN2(image_size=16, r1_gamma=-1.0)
    with pytest.raises(ValueError, match="style_mixing_prob"):
        StyleGAN2(image_size=16, style_mixing_prob=1.5)
    with pytest.raises(ValueError, match="channel_base"):
        StyleGAN2(image_size=16, channel_base=0)
    with pytest.raises(ValueError, match="ADA target"):
        StyleGAN2(image_size=16, ada_target=1.0)
    with pytest.raises(ValueError, match="DiffAugment policy"):
        StyleGAN2(image_size=16, ada_policy="color,rotate")
    model = StyleGAN2(**tiny_kwargs(2, num_classes=2))
    with pytest.raises(ValueError, match="shape"):
        model.training_step({"image": torch.zeros(2, 1, 32, 32), "label": torch.zeros(2)}, 0)
    with pytest.raises(ValueError, match="label"):
        model.training_step({"image": torch.zeros(2, 1, 16, 16)}, 0)
