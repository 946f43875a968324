"""VAE, conditional VAE and beta-VAE: training with a real Trainer, sampling, saving, validation."""

from functools import partial

import pytest
import torch
from generative_testing import assert_distinct_samples, quiet_trainer
from lightning.pytorch.callbacks import LambdaCallback

from lightning_medaug.data import PhantomDataModule, make_phantoms
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.vae import VAE, BetaVAE, ConditionalVAE
from lightning_medaug.registry import create_generator, list_generators

tiny_trainer = partial(quiet_trainer, limit_val_batches=0)  # training only, unless a test asks


SIZES = {2: 16, 3: 8}
STEPS = {2: 30, 3: 15}
CLASSES = {"vae": VAE, "cvae": ConditionalVAE, "beta_vae": BetaVAE}


def tiny_kwargs(name: str, spatial_dims: int = 2) -> dict:
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZES[spatial_dims], "channels": (8, 16),
              "norm_num_groups": 4, "latent_channels": 2, "lr": 3e-3}
    if name == "cvae":
        kwargs.update(num_classes=2, cond_channels=2)
    return kwargs


def fit_fixed_batch(model, spatial_dims: int, steps: int, **trainer_kwargs):
    """Overfit one fixed batch of 16 phantoms; returns the per-step training losses and the data."""
    data = PhantomDataModule(spatial_dims=spatial_dims, image_size=SIZES[spatial_dims], num_train=16, num_val=8,
                             num_test=8, batch_size=16)
    losses = []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: losses.append(float(out["loss"])))
    trainer = tiny_trainer(steps, callbacks=[record], **trainer_kwargs)
    trainer.fit(model, datamodule=data)
    return trainer, losses, data


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", ["vae", "cvae", "beta_vae"])
def test_overfit_sample_and_reload(name, spatial_dims, tmp_path):
    model = create_generator(name, **tiny_kwargs(name, spatial_dims))
    assert isinstance(model, CLASSES[name])

    def gen():
        return torch.Generator().manual_seed(7)

    images = make_phantoms(16, spatial_dims, SIZES[spatial_dims])[0]
    before = model.sample(16, generator=gen())

    trainer, losses, data = fit_fixed_batch(model, spatial_dims, STEPS[spatial_dims])
    assert len(losses) == STEPS[spatial_dims]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses

    model.eval()
    after = model.sample(16, generator=gen())
    assert after.shape == (16,) + model.image_shape and after.dtype == torch.float32
    assert_distinct_samples(after)
    # samples from the prior move toward the data: mostly dark background, like the phantoms
    data_mean = images.mean()
    assert abs(after.mean() - data_mean) < 0.25 and abs(after.mean() - data_mean) < abs(before.mean() - data_mean)
    assert after.std() > 0.1

    # the shared step serves validation too
    metrics = tiny_trainer(1, limit_val_batches=1).validate(model, datamodule=data, verbose=False)[0]
    assert {"val/loss", "val/recon", "val/kl"} <= set(metrics) and torch.isfinite(torch.tensor(metrics["val/loss"]))

    # save_pretrained / load_generator and Lightning checkpoints reproduce samples bit for bit
    reloaded = load_generator(model.save_pretrained(tmp_path / "pretrained"))
    assert type(reloaded) is type(model) and reloaded.hparams.beta == model.hparams.beta
    assert torch.equal(reloaded.sample(16, generator=gen()), after)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = type(model).load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu").eval()
    assert torch.equal(restored.sample(16, generator=gen()), after)


@pytest.mark.parametrize("name", ["vae", "cvae", "beta_vae"])
def test_sample_contract(name):
    model = create_generator(name, **tiny_kwargs(name)).eval()
    a = model.sample(4, generator=torch.Generator().manual_seed(0))
    b = model.sample(4, generator=torch.Generator().manual_seed(0))
    c = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    if name == "cvae":
        zeros = model.sample(4, labels=torch.zeros(4, dtype=torch.long), generator=torch.Generator().manual_seed(0))
        ones = model.sample(4, labels=torch.ones(4, dtype=torch.long), generator=torch.Generator().manual_seed(0))
        assert not torch.equal(zeros, ones)  # the label reaches the decoder
        with pytest.raises(ValueError, match="labels must lie"):
            model.sample(2, labels=torch.tensor([0, 2]))
    else:
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(2, labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_first_stage_interface(spatial_dims):
    model = VAE(**tiny_kwargs("vae", spatial_dims)).eval()
    side = SIZES[spatial_dims] // 2
    assert model.latent_shape == (2,) + (side,) * spatial_dims
    x = make_phantoms(3, spatial_dims, SIZES[spatial_dims])[0]
    z = model.encode(x)
    assert z.shape == (3,) + model.latent_shape and torch.equal(z, model.encode(x))  # deterministic: the mean
    recon = model.decode(z)
    assert recon.shape == x.shape
    assert_distinct_samples(recon)  # each latent decodes to its own image

    cond = ConditionalVAE(num_classes=2, **{k: v for k, v in tiny_kwargs("vae", spatial_dims).items()})
    labels = torch.tensor([0, 1, 1])
    assert cond.encode(x, labels).shape == (3,) + cond.latent_shape
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        cond.encode(x)


def test_kl_warmup_and_beta_defaults():
    assert BetaVAE().hparams.beta == 4.0 and VAE().hparams.beta == 1.0
    model = VAE(kl_warmup_steps=10, beta=2.0)
    assert model.kl_weight() == pytest.approx(0.2)  # step 0 of 10 -> (0 + 1) / 10 * beta


def test_registry_names():
    assert {"vae", "cvae", "beta_vae", "vqvae"} <= set(list_generators())


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"image_size": (30, 30, 30)}, "has 3 sizes but spatial_dims=2"),
    ({"channels": (16, 24), "norm_num_groups": 16}, "divisible by norm_num_groups"),
    ({"recon_loss": "bce"}, "recon_loss must be one of"),
    ({"beta": -1.0}, "beta must be >= 0"),
    ({"latent_channels": 0}, "latent_channels must be at least 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(**kwargs)


def test_cvae_needs_classes_and_labels():
    with pytest.raises(ValueError, match="num_classes >= 1"):
        ConditionalVAE()
    with pytest.raises(ValueError, match="num_classes >= 1"):
        create_generator("cvae", num_classes=0)
    model = ConditionalVAE(num_classes=2, **tiny_kwargs("vae"))
    with pytest.raises(ValueError, match="needs a 'label' in every batch"):
        model.training_step({"image": make_phantoms(2, 2, 16)[0]}, 0)


def test_bf16_mixed_training_and_sampling():
    model = ConditionalVAE(num_classes=2, **{k: v for k, v in tiny_kwargs("vae").items()})
    data = PhantomDataModule(image_size=16, num_train=8, num_val=4, num_test=4, batch_size=8)
    run = tiny_trainer(2, precision="bf16-mixed")
    run.fit(model, datamodule=data)
    assert torch.isfinite(run.callback_metrics["train/loss"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.sample(2, generator=torch.Generator().manual_seed(0))
    # float32 out, and the float32 samples up to bfloat16 precision
    full = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.float32 and torch.allclose(images, full, atol=0.05)
