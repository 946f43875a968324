"""DCGAN, conditional GAN and WGAN-GP: real Trainer runs on tiny 2D/3D phantoms."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from generative_testing import (
    RecordRealLogits,
    assert_distinct_samples,
    assert_exports_round_trip,
    phantom_data,
    seeded,
)
from generative_testing import quiet_trainer as trainer

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.gan import DCGAN, GAN, WGANGP, ConditionalGAN
from lightning_medaug.registry import create_generator, list_generators

FAMILIES = {"dcgan": DCGAN, "cgan": ConditionalGAN, "wgan_gp": WGANGP}
SIZE = {2: 16, 3: 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_kwargs(name: str, spatial_dims: int, **overrides) -> dict:
    kwargs = {"spatial_dims": spatial_dims, "image_size": SIZE[spatial_dims], "latent_dim": 16,
              "generator_channels": 8, "discriminator_channels": 8, "lr_g": 2e-3, "lr_d": 2e-3}
    if name != "dcgan":
        kwargs["num_classes"] = 2
    if name == "wgan_gp":
        kwargs["n_critic"] = 2
    kwargs.update(overrides)
    return kwargs


def phantoms(spatial_dims: int) -> PhantomDataModule:
    return phantom_data(spatial_dims, SIZE[spatial_dims])


@pytest.fixture(scope="module", params=[(n, d) for n in FAMILIES for d in (2, 3)], ids=lambda p: f"{p[0]}-{p[1]}d")
def trained(request):
    """A model trained for 30 batches (global_step counts D and G steps) and its initial sample mean."""
    name, spatial_dims = request.param
    L.seed_everything(0)
    model = FAMILIES[name](**tiny_kwargs(name, spatial_dims))
    data = phantoms(spatial_dims)
    data.setup()
    init_mean = model.sample(64, generator=seeded(0)).mean().item()
    real_logits = RecordRealLogits()
    fit = trainer(60, callbacks=[real_logits])
    fit.fit(model, data)
    return name, model, data, init_mean, fit, real_logits


def test_training_moves_samples_toward_the_data(trained):
    _, model, data, init_mean, fit, real_logits = trained
    data_mean = data.datasets["train"].images.mean().item()
    samples = model.sample(64, generator=seeded(0))
    # At init the tanh output sits near 0; the phantoms are mostly dark background (mean ~ -0.7).
    assert abs(samples.mean().item() - data_mean) < 0.7 * abs(init_mean - data_mean)
    metrics = fit.callback_metrics
    for key in ("train/loss_g", "train/loss_d", "train/loss"):
        assert torch.isfinite(metrics[key])
    assert metrics["train/loss"] == metrics["train/loss_g"]
    # Karras 2020's overfitting heuristic E[sign D(real)]; a Wasserstein critic's sign means nothing
    if isinstance(model, WGANGP):
        assert "train/rt" not in metrics
    else:
        # the epoch mean of the reals' logit signs, not of the fakes' (or of the logits themselves)
        assert float(metrics["train/rt"]) == pytest.approx(real_logits.last_epoch_rt(), abs=1e-6)
        assert "train/rt_epoch" in metrics


def test_rt_is_the_mean_sign_of_the_real_logits():
    model = ConditionalGAN(**tiny_kwargs("cgan", 2))
    logits = torch.tensor([[2.0], [-1.0], [3.0], [0.5]])
    assert model.discriminator_logs(logits) == {"rt": torch.tensor(0.5)}
    assert WGANGP(**tiny_kwargs("wgan_gp", 2)).discriminator_logs(logits) == {}


def test_sample_contract(trained):
    _, model, *_ = trained
    a = model.sample(5, generator=seeded(1))
    b = model.sample(5, generator=seeded(1))
    c = model.sample(5, generator=seeded(2))
    assert a.shape == (5, *model.image_shape) and a.dtype == torch.float32
    assert_distinct_samples(a)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.hparams.spatial_dims == model.spatial_dims and "num_classes" in model.hparams
    with pytest.raises(ValueError, match="mask"):
        model.sample(2, masks=torch.zeros(2, *model.mask_shape))


def test_sample_uses_the_ema_generator(trained):
    _, model, *_ = trained
    z = torch.randn(4, model.hparams.latent_dim, generator=seeded(3))
    labels = torch.tensor([0, 1, 0, 1]) if model.num_classes else None
    model.ema.module.eval()
    model.generator.eval()
    with torch.no_grad():
        expected, raw = model.ema.module(z, labels), model.generator(z, labels)
    model.generator.train()
    got = model.sample(4, labels=labels, generator=seeded(3))
    assert torch.allclose(got, expected) and not torch.allclose(got, raw)


def test_labels_are_respected_by_the_conditional_gan():
    model = ConditionalGAN(**tiny_kwargs("cgan", 2))
    zeros = model.sample(4, labels=torch.zeros(4, dtype=torch.long), generator=seeded(0))
    ones = model.sample(4, labels=torch.ones(4, dtype=torch.long), generator=seeded(0))
    assert not torch.allclose(zeros, ones)  # same z, different label embedding
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        DCGAN(**tiny_kwargs("dcgan", 2)).sample(2, labels=torch.tensor([0, 1]))


def test_save_pretrained_round_trip_is_bit_exact(trained, tmp_path):
    name, model, *_ = trained
    loaded = assert_exports_round_trip(model, tmp_path / name)
    assert type(loaded) is type(model) and loaded.hparams == model.hparams
    assert torch.equal(model.sample(6, generator=seeded(5)), loaded.sample(6, generator=seeded(5)))


def test_lightning_checkpoint_round_trip(trained, tmp_path):
    _, model, _, _, fit, _ = trained
    fit.save_checkpoint(tmp_path / "gan.ckpt")
    restored = type(model).load_from_checkpoint(tmp_path / "gan.ckpt")
    assert torch.equal(model.sample(3, generator=seeded(7)), restored.sample(3, generator=seeded(7)))


def test_registry_creates_the_family():
    assert {"dcgan", "cgan", "wgan_gp"} <= set(list_generators())
    model = create_generator("cgan", **tiny_kwargs("cgan", 2, num_classes=3))
    assert isinstance(model, ConditionalGAN) and model.num_classes == 3
    assert model.sample(3, labels=torch.tensor([0, 1, 2])).shape == (3, 1, 16, 16)


def test_gradient_clipping_and_small_data_options_apply():
    model = DCGAN(**tiny_kwargs("dcgan", 2, gradient_clip_val=1e-3, r1_gamma=1.0, label_smoothing=0.1))
    trainer(8).fit(model, phantoms(2))
    # Under manual optimisation only the module's own clip_gradients call can bound these norms.
    for net in (model.generator, model.discriminator):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 * 1.01


def test_wgan_gp_trains_under_bf16_mixed_precision():
    model = WGANGP(**tiny_kwargs("wgan_gp", 2, n_critic=1))
    fit = trainer(4, precision="bf16-mixed")
    fit.fit(model, phantoms(2))
    assert fit.global_step == 4
    assert torch.isfinite(fit.callback_metrics["train/loss"]) and torch.isfinite(fit.callback_metrics["train/loss_d"])


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="unconditional"):
        DCGAN(num_classes=2)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        ConditionalGAN(num_classes=0)
    with pytest.raises(ValueError, match="image_size=7"):
        DCGAN(image_size=7)
    with pytest.raises(ValueError, match="not reachable"):
        DCGAN(image_size=16, num_upsamples=5)
    with pytest.raises(ValueError, match="DiffAugment policy"):
        DCGAN(image_size=16, diffaugment="color,flip")
    with pytest.raises(ValueError, match="label_smoothing"):
        WGANGP(image_size=16, label_smoothing=0.1)
    model = ConditionalGAN(**tiny_kwargs("cgan", 2))
    with pytest.raises(ValueError, match="shape"):
        model.training_step({"image": torch.zeros(2, 1, 32, 32), "label": torch.zeros(2)}, 0)
    with pytest.raises(ValueError, match="label"):
        model.training_step({"image": torch.zeros(2, 1, 16, 16)}, 0)
    assert issubclass(WGANGP, GAN)


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.gan import WGANGP


class WriteRankState(L.Callback):
    # forked ranks do not run the code after fit(): each writes its own state here
    def on_train_end(self, trainer, model):
        params = [*model.generator.parameters(), *model.discriminator.parameters()]
        state = {"checksum": sum(p.double().sum().item() for p in params),
                 "loss": trainer.callback_metrics["train/loss"].item()}
        with open(sys.argv[1] + f"/rank{trainer.global_rank}.json", "w") as f:
            json.dump(state, f)


torch.set_num_threads(1)
L.seed_everything(0)
model = WGANGP(spatial_dims=2, image_size=16, num_classes=2, latent_dim=16, generator_channels=8,
               discriminator_channels=8, n_critic=2)
data = PhantomDataModule(image_size=16, num_train=32, batch_size=4)
trainer = L.Trainer(accelerator="cpu", devices=2, logger=False, callbacks=[WriteRankState()],
                    strategy=DDPStrategy(find_unused_parameters=True, start_method="fork"),
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, max_steps=6)
trainer.fit(model, data)
"""


def test_wgan_gp_trains_under_ddp(tmp_path):
    """Two CPU ranks (gloo): the gradient penalty's double backward and both optimisers stay in sync.

    GANs step two optimisers on parts of the model, so DDP needs ``find_unused_parameters=True``
    (``strategy="ddp_find_unused_parameters_true"``); forking the ranks saves a second import.
    """
    script = tmp_path / "ddp_gan.py"
    script.write_text(DDP_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            encoding="utf-8", errors="replace", timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # gradients were all-reduced
    assert all(math.isfinite(r["loss"]) for r in ranks)
