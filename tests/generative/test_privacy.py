"""DP-SGD training of generators (DifferentialPrivacy callback): clipping, accounting, budgets,
export, the recipe through the CLI, and argument errors. Real Trainer runs on tiny phantoms."""

import itertools
import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback
from torch import nn

from lightning_medaug.cli import main
from lightning_medaug.data import PhantomDataModule, make_phantoms
from lightning_medaug.generative import load_generator
from lightning_medaug.generative.privacy import (
    PRIVACY_REPORT,
    DifferentialPrivacy,
    load_privacy_report,
    unsupported_layers,
)
from lightning_medaug.registry import create_generator

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "dp_vae_pneumonia.yaml"
SIZES = {2: 16, 3: 8}


def tiny_vae(spatial_dims: int = 2):
    return create_generator("vae", spatial_dims=spatial_dims, image_size=SIZES[spatial_dims], channels=(8, 16),
                            norm_num_groups=4, latent_channels=2, lr=3e-3)


def phantoms(spatial_dims: int = 2, num_train: int = 64, batch_size: int = 16) -> PhantomDataModule:
    # 64 images, expected batch 16: sample rate 1/4, 4 steps per epoch
    return PhantomDataModule(spatial_dims=spatial_dims, image_size=SIZES[spatial_dims], num_train=num_train, num_val=8,
                             num_test=8, batch_size=batch_size)


def dp_fit(model, dp: DifferentialPrivacy, steps: int, root: Path, spatial_dims: int = 2, callbacks=(), **kwargs):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=steps, limit_val_batches=0, default_root_dir=root,
                        callbacks=[dp, *callbacks], **kwargs)
    trainer.fit(model, datamodule=phantoms(spatial_dims))
    return trainer


def test_per_example_gradients_are_clipped(tmp_path):
    """Without noise the applied gradient is the sum of clipped per-example gradients over the
    expected batch size, so its norm cannot exceed max_grad_norm * batch / expected batch."""
    clip = 1e-3
    dp = DifferentialPrivacy(noise_multiplier=0.0, max_grad_norm=clip)
    seen = []

    def record(trainer, module, outputs, batch, batch_idx):
        grad_norm = torch.cat([p.grad.flatten() for p in module.parameters()]).norm().item()
        seen.append((grad_norm, batch["image"].shape[0], type(trainer.optimizers[0]).__name__))

    model = tiny_vae()
    dp_fit(model, dp, 6, tmp_path, callbacks=[LambdaCallback(on_train_batch_end=record)])
    assert len(seen) == 6
    for grad_norm, batch_size, optimizer in seen:
        assert optimizer == "DPOptimizer"
        assert 0 < grad_norm <= clip * batch_size / 16 * (1 + 1e-4)
    # an unclipped gradient of this model is orders of magnitude larger than the bound
    model.train()
    model.zero_grad()
    model.loss_terms(make_phantoms(16, 2, SIZES[2])[0], None)["loss"].backward()
    assert torch.cat([p.grad.flatten() for p in model.parameters()]).norm() > 100 * clip
    assert dp.epsilon == math.inf  # no noise, no privacy
    # the module is left as it was: no Opacus attributes or hooks
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "summed_grad") for p in model.parameters())


def test_dp_vae_learns_accounts_and_exports(tmp_path):
    dp = DifferentialPrivacy(noise_multiplier=0.5, max_grad_norm=1.0)
    losses, epsilons = [], []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: losses.append(float(out["loss"])),
                            on_train_epoch_end=lambda tr, m: epsilons.append(float(tr.callback_metrics["dp/epsilon"])))
    model = tiny_vae()
    trainer = dp_fit(model, dp, 24, tmp_path, callbacks=[record])
    assert len(losses) == 24 and sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses
    # epsilon is logged every epoch (4 steps), finite, positive, and grows with the steps taken
    assert len(epsilons) == 6 and 0 < epsilons[0] and math.isfinite(epsilons[-1])
    assert all(a < b for a, b in itertools.pairwise(epsilons)), epsilons
    assert dp.steps == 24 and dp.sample_rate == pytest.approx(0.25) and dp.dataset_size == 64
    assert dp.delta == pytest.approx(1 / 640)  # default: 1 / (10 N)
    assert float(trainer.callback_metrics["dp/delta"]) == pytest.approx(1 / 640)

    # privacy.json in the run folder and in generator/, where `medaug fit` exports the model
    model.save_pretrained(tmp_path / "generator")
    for folder in (tmp_path, tmp_path / "generator"):
        assert (folder / PRIVACY_REPORT).is_file()
        report = load_privacy_report(folder)
        assert report["epsilon"] == pytest.approx(epsilons[-1], rel=1e-5)
        assert report["steps"] == 24 and report["noise_multiplier"] == 0.5 and report["accountant"] == "rdp"
    assert not any(k.startswith("_module.") for k in model.state_dict())
    reloaded = load_generator(tmp_path / "generator")
    samples = reloaded.sample(8, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (8, 1, 16, 16) and torch.isfinite(samples).all()
    assert torch.allclose(samples, model.eval().sample(8, generator=torch.Generator().manual_seed(0)))

    # the accountant's state survives a checkpoint: a resumed callback keeps counting
    resumed = DifferentialPrivacy(noise_multiplier=0.5)
    resumed.load_state_dict(dp.state_dict())
    resumed.dataset_size = dp.dataset_size
    assert resumed.steps == 24 and resumed.epsilon == pytest.approx(dp.epsilon)


def test_target_epsilon_calibrates_the_noise(tmp_path):
    dp = DifferentialPrivacy(target_epsilon=4.0, target_delta=1e-3)
    trainer = dp_fit(tiny_vae(), dp, 8, tmp_path)
    assert trainer.global_step == 8 and dp.steps == 8
    assert dp.noise_multiplier > 0
    assert 4.0 - 0.05 <= dp.epsilon <= 4.0  # the planned steps use (almost) the whole budget
    assert not dp.stopped_at_budget


def test_budget_stops_training_before_it_is_exceeded(tmp_path):
    dp = DifferentialPrivacy(noise_multiplier=0.5, target_epsilon=12.0)
    with pytest.warns(UserWarning, match="privacy budget reached"):
        trainer = dp_fit(tiny_vae(), dp, 40, tmp_path)
    trainer.save_checkpoint(tmp_path / "spent.ckpt")
    assert dp.stopped_at_budget and trainer.global_step < 40
    assert 0 < dp.epsilon <= 12.0 and load_privacy_report(tmp_path)["stopped_at_budget"] is True
    steps = dp.steps
    # one more step would have gone past the budget
    dp.history[-1] = (*dp.history[-1][:2], steps + 1)
    assert dp.epsilon > 12.0

    # resuming from a checkpoint restores the accountant: no budget left, so not a single step more
    resumed = DifferentialPrivacy(noise_multiplier=0.5, target_epsilon=12.0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=40, limit_val_batches=0, callbacks=[resumed],
                        default_root_dir=tmp_path / "resumed")
    with pytest.warns(UserWarning, match="privacy budget reached"):
        trainer.fit(tiny_vae(), datamodule=phantoms(), ckpt_path=tmp_path / "spent.ckpt")
    assert resumed.steps == steps and trainer.global_step == steps


def test_dp_training_in_3d(tmp_path):
    dp = DifferentialPrivacy(noise_multiplier=1.0, accountant="prv")
    model = tiny_vae(3)
    dp_fit(model, dp, 3, tmp_path, spatial_dims=3)
    assert dp.steps == 3 and 0 < dp.epsilon < math.inf
    assert load_privacy_report(tmp_path)["accountant"] == "prv"
    assert model.sample(2).shape == (2, 1, 8, 8, 8)


def test_recipe_runs_through_the_cli(tmp_path, monkeypatch):
    """The recipe parses and trains (shrunk to two steps); privacy.json sits beside the exported generator."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(RECIPE), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--data.init_args.batch_size", "16", "--data.init_args.subset", "32",
            "--model.init_args.channels", "[16, 16, 16]"]
    assert main(args) == 0
    generator = next((tmp_path / "runs" / "dp_vae_pneumonia").glob("version_*/generator"))
    report = load_privacy_report(generator)
    assert report["steps"] == 2 and report["delta"] == 1e-5 and report["epsilon"] <= 8.0
    assert load_generator(generator).sample(2).shape == (2, 1, 28, 28)


def test_unsupported_layers_are_named():
    assert unsupported_layers(tiny_vae()) == []  # MONAI's AutoencoderKL: convolutions and GroupNorm only
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert unsupported_layers(net) == ["1 (BatchNorm2d)"]


class _BatchNormModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))

    def training_step(self, batch, batch_idx):
        return self.net(batch["image"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("case, match", [
    ("batchnorm", "net.1 \\(BatchNorm2d\\)"),
    ("accumulate", "accumulate_grad_batches=2"),
    ("manual", "automatic optimization"),
    ("fp16", "precision='16-true' is not supported"),
])
def test_unsupported_training_setups_raise(case, match, tmp_path):
    model, kwargs = tiny_vae(), {}
    if case == "batchnorm":
        model = _BatchNormModule()
    elif case == "accumulate":
        kwargs["accumulate_grad_batches"] = 2
    elif case == "fp16":
        kwargs["precision"] = "16-true"
    else:
        model = create_generator("dcgan", image_size=16, latent_dim=8, generator_channels=8, discriminator_channels=8)
    with pytest.raises(ValueError, match=match):
        dp_fit(model, DifferentialPrivacy(noise_multiplier=1.0), 2, tmp_path, **kwargs)


def test_ddp_is_refused_with_a_clear_error():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(ValueError, match="one device"):
        DifferentialPrivacy(noise_multiplier=1.0).setup(trainer, tiny_vae(), "fit")


@pytest.mark.parametrize("kwargs, match", [
    ({}, "target_epsilon .* or noise_multiplier"),
    ({"target_epsilon": 0.0}, "target_epsilon must be a positive"),
    ({"noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
    ({"target_epsilon": 3.0, "noise_multiplier": 0.0}, "no privacy"),
    ({"noise_multiplier": 1.0, "target_delta": 1.0}, "target_delta must lie in"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "max_grad_norm must be positive"),
    ({"noise_multiplier": 1.0, "accountant": "gdp"}, "accountant must be one of"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DifferentialPrivacy(**kwargs)


def test_target_epsilon_needs_a_planned_length(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        dp_fit(tiny_vae(), DifferentialPrivacy(target_epsilon=3.0), -1, tmp_path, max_epochs=-1)


def test_missing_opacus_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # what an environment without the extra looks like
    with pytest.raises(ImportError, match=r'pip install "lightning-medaug\[dp\]"'):
        DifferentialPrivacy(noise_multiplier=1.0)
