"""VAE-GAN and IntroVAE: real Trainer runs on tiny 2D/3D phantoms, sampling, saving, validation."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import pytest
import torch
from generative_testing import assert_distinct_samples, assert_exports_round_trip, quiet_trainer, seeded
from lightning.pytorch.callbacks import LambdaCallback

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.adversarial_vae import (
    VAEGAN,
    AdversarialVAE,
    IntroVAE,
    kl_per_sample,
)
from lightning_medaug.generative.vae import VAE
from lightning_medaug.registry import create_generator, list_generators

trainer = partial(quiet_trainer, limit_val_batches=0)  # training only, unless a test asks


FAMILIES = {"vaegan": VAEGAN, "introvae": IntroVAE}
SIZE = {2: 16, 3: 8}
BATCHES = {2: 25, 3: 20}  # optimiser steps per batch: 3 (VAE-GAN) or 2 (IntroVAE)
KEYS = {"vaegan": {"loss_e", "loss_g", "loss_d", "kl", "feature_recon", "recon", "loss"},
        "introvae": {"loss_e", "loss_g", "kl", "kl_rec", "kl_fake", "recon", "loss"}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_kwargs(name: str, spatial_dims: int, **overrides) -> dict:
    # 2D models are class-conditional, 3D ones unconditional: both paths are trained below.
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZE[spatial_dims], "channels": (8, 16),
              "norm_num_groups": 4, "latent_channels": 2, "lr": 3e-3, "num_classes": 2 if spatial_dims == 2 else 0,
              "cond_channels": 2}
    if name == "vaegan":
        kwargs.update(discriminator_channels=8, lr_d=3e-3)
    kwargs.update(overrides)
    return kwargs


def phantoms(spatial_dims: int) -> PhantomDataModule:
    data = PhantomDataModule(spatial_dims=spatial_dims, image_size=SIZE[spatial_dims], num_train=16, num_val=16,
                             num_test=8, batch_size=16)
    data.setup()
    return data


def pixel_error(model: VAE, images: torch.Tensor, labels: torch.Tensor | None) -> float:
    with torch.no_grad():
        return float((model(images, labels) - images).pow(2).mean())


@pytest.fixture(scope="module", params=[(n, d) for n in FAMILIES for d in (2, 3)], ids=lambda p: f"{p[0]}-{p[1]}d")
def trained(request):
    """A model overfitted to one fixed batch of 16 phantoms, with its figures before training."""
    name, spatial_dims = request.param
    L.seed_everything(0)
    model = create_generator(name, **tiny_kwargs(name, spatial_dims))
    data = phantoms(spatial_dims)
    train = data.datasets["train"]
    labels = train.labels if model.num_classes else None
    before = {"recon": pixel_error(model, train.images, labels), "samples": model.sample(64, generator=seeded(0)),
              "parameters": {k: p.detach().clone() for k, p in model.named_parameters()}}
    logged = []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: logged.append(dict(tr.callback_metrics)))
    steps = BATCHES[spatial_dims] * (3 if name == "vaegan" else 2)
    fit = trainer(steps, callbacks=[record])
    fit.fit(model, data)
    return name, model.eval(), data, before, logged, fit


def test_training_reconstructs_and_moves_samples_toward_the_data(trained):
    name, model, data, before, logged, fit = trained
    train = data.datasets["train"]
    assert fit.global_step == BATCHES[model.spatial_dims] * (3 if name == "vaegan" else 2)
    assert len(logged) == BATCHES[model.spatial_dims]
    assert {f"train/{k}" for k in KEYS[name]} <= set(logged[-1])
    assert all(torch.isfinite(v) for step in logged for v in step.values())
    assert logged[-1]["train/loss"] == logged[-1]["train/loss_g"]
    # reconstruction through the posterior mean improved a lot (adversarial losses need not fall)
    after = pixel_error(model, train.images, train.labels if model.num_classes else None)
    assert after < 0.4 * before["recon"], (before["recon"], after)
    # prior samples: mostly dark background like the phantoms (mean ~ -0.7 to -0.9), not collapsed
    samples = model.sample(64, generator=seeded(0))
    data_mean, data_std = train.images.mean(), train.images.std()
    assert abs(samples.mean() - data_mean) < 0.5 * abs(before["samples"].mean() - data_mean)
    assert 0.4 * data_std < samples.std() < 1.5 * data_std, (samples.std(), data_std)
    # ... and the mean image (a bright organ in the middle of a dark field) is approached too
    mean_image = train.images.mean(0)

    def gap(images):
        return (images.mean(0) - mean_image).abs().mean()

    assert gap(samples) < 0.5 * gap(before["samples"]), (gap(samples), gap(before["samples"]))


def test_every_network_is_trained(trained):
    name, model, _, before, *_ = trained
    frozen = [k for k, p in model.named_parameters() if torch.equal(p, before["parameters"][k])]
    assert not frozen, f"never updated: {frozen}"
    assert any(k.startswith("discriminator.") for k in before["parameters"]) == (name == "vaegan")


def test_sample_contract(trained):
    _, model, *_ = trained
    a = model.sample(5, generator=seeded(1))
    b = model.sample(5, generator=seeded(1))
    c = model.sample(5, generator=seeded(2))
    assert a.shape == (5, *model.image_shape) and a.dtype == torch.float32
    assert_distinct_samples(a)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert {"spatial_dims", "in_channels", "image_size", "num_classes"} <= set(model.hparams)
    with pytest.raises(ValueError, match="mask"):
        model.sample(2, masks=torch.zeros(2, *model.mask_shape))


def test_class_labels_reach_the_decoder(trained):
    _, model, *_ = trained
    if model.num_classes == 0:
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(2, labels=torch.tensor([0, 1]))
        return
    zeros = model.sample(8, labels=torch.zeros(8, dtype=torch.long), generator=seeded(3))
    ones = model.sample(8, labels=torch.ones(8, dtype=torch.long), generator=seeded(3))
    assert not torch.allclose(zeros, ones)  # same z, other label
    # a batch without labels cannot train a conditional model
    with pytest.raises(ValueError, match="label"):
        model.training_step({"image": torch.zeros(2, *model.image_shape)}, 0)
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, labels=torch.tensor([0, 2]))


def test_validation_runs_the_vae_step(trained):
    _, model, data, *_ = trained
    metrics = trainer(1, limit_val_batches=1).validate(model, datamodule=data, verbose=False)[0]
    assert {"val/loss", "val/recon", "val/kl"} <= set(metrics)
    assert metrics["val/loss"] == pytest.approx(metrics["val/recon"] + metrics["val/kl"], rel=1e-4)


def test_save_pretrained_and_checkpoint_reproduce_samples(trained, tmp_path):
    name, model, _, _, _, fit = trained
    expected = model.sample(6, generator=seeded(5))
    loaded = assert_exports_round_trip(model, tmp_path / name)
    assert type(loaded) is type(model)
    assert json.dumps(dict(loaded.hparams), sort_keys=True) == json.dumps(dict(model.hparams), sort_keys=True)
    assert torch.equal(loaded.sample(6, generator=seeded(5)), expected)
    fit.save_checkpoint(tmp_path / f"{name}.ckpt")
    restored = type(model).load_from_checkpoint(tmp_path / f"{name}.ckpt", map_location="cpu").eval()
    assert torch.equal(restored.sample(6, generator=seeded(5)), expected)


def test_optimisers_split_the_parameters(trained):
    name, model, *_ = trained
    groups = [[p for g in opt.param_groups for p in g["params"]] for opt in model.configure_optimizers()]
    assert len(groups) == (3 if name == "vaegan" else 2)
    ids = [{id(p) for p in group} for group in groups]
    assert sum(len(s) for s in ids) == len(set().union(*ids))  # disjoint
    assert set().union(*ids) == {id(p) for p in model.parameters()}  # complete
    assert {id(p) for p in model.autoencoder.encoder.parameters()} <= ids[0]
    assert {id(p) for p in model.autoencoder.decoder.parameters()} <= ids[1]


def test_vaegan_feature_space():
    model = VAEGAN(**tiny_kwargs("vaegan", 2, feature_layer=1)).eval()
    deep = VAEGAN(**tiny_kwargs("vaegan", 2)).eval()
    images = phantoms(2).datasets["train"].images[:4]
    # block 1 halves the grid with `discriminator_channels` maps; the default is the deepest block
    assert model.features(images).shape == (4, 8, 8, 8)
    assert deep.features(images).shape == (4, 16, 4, 4)
    with torch.no_grad():
        target = model.features(images)
        assert model.feature_distance(images, target) == 0
        assert model.feature_distance(-images, target) > 0.1
    assert isinstance(model, AdversarialVAE) and isinstance(model, VAE)


def test_kl_per_sample_matches_the_closed_form():
    mu, sigma = torch.zeros(2, 2, 4, 4), torch.ones(2, 2, 4, 4)
    assert torch.equal(kl_per_sample(mu, sigma, 64), torch.zeros(2))
    mu[1] = 2.0  # KL = mu^2 / 2 = 2 nats per latent element, 32 elements, 64 image elements
    assert kl_per_sample(mu, sigma, 64).tolist() == [0.0, 1.0]


def test_bf16_mixed_training():
    model = VAEGAN(**tiny_kwargs("vaegan", 2))
    fit = trainer(3, precision="bf16-mixed")
    fit.fit(model, phantoms(2))
    assert fit.global_step == 3 and torch.isfinite(fit.callback_metrics["train/loss"])
    assert torch.isfinite(fit.callback_metrics["train/loss_d"])


def test_registry_names():
    assert {"vaegan", "introvae"} <= set(list_generators())
    assert type(create_generator("introvae", **tiny_kwargs("introvae", 3))) is IntroVAE


@pytest.mark.parametrize("cls, kwargs, match", [
    (VAEGAN, {"gamma": -1.0}, "gamma must be"),
    (VAEGAN, {"discriminator_channels": 0}, "discriminator_channels"),
    (VAEGAN, {"feature_layer": 5}, r"feature_layer must lie in \[1, 3\]"),
    (VAEGAN, {"lr_d": 0.0}, "lr_d must be positive"),
    (VAEGAN, {"diffaugment": "flip"}, "DiffAugment policy"),
    (VAEGAN, {"num_downsamples": 5}, "not reachable"),
    (IntroVAE, {"alpha": -0.1}, "alpha must be"),
    (IntroVAE, {"recon_weight": 0.0}, "recon_weight must be positive"),
    (IntroVAE, {"margin": 0.0}, "margin must be positive"),
    (IntroVAE, {"beta1": 1.0}, "Adam betas"),
    (IntroVAE, {"gradient_clip_val": -1.0}, "gradient_clip_val"),
    (IntroVAE, {"image_size": (17, 17, 17)}, "has 3 sizes but spatial_dims=2"),
])
def test_bad_arguments(cls, kwargs, match):
    base = {"image_size": 16, "channels": (8, 16), "norm_num_groups": 4}
    with pytest.raises(ValueError, match=match):
        cls(**{**base, **kwargs})


def test_batches_of_the_wrong_shape_are_refused():
    model = IntroVAE(**tiny_kwargs("introvae", 2))
    with pytest.raises(ValueError, match="expects images of shape"):
        model.training_step({"image": torch.zeros(2, 1, 32, 32), "label": torch.zeros(2)}, 0)
