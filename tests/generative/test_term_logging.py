"""Training terms are summed on the device and logged on the batches the loggers write and once
per epoch: the CSV and ``callback_metrics`` show the same figures ``self.log(on_step, on_epoch)``
would, at a fraction of the calls."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback
from lightning.pytorch.loggers import CSVLogger

from lightning_medaug.generative.term_logging import TermAccumulator
from lightning_medaug.registry import create_generator
from tests.generative.generative_testing import phantom_data, quiet_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str):
    torch.manual_seed(0)
    extra = {"latent_channels": 2} if name == "vae" else {}
    return create_generator(name, image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4, **extra)


def test_accumulator_weights_by_batch_size_and_averages_each_term_over_its_own_batches():
    acc = TermAccumulator()
    assert acc.means() == {}
    acc.add({"loss": torch.tensor(1.0), "kl": torch.tensor(4.0)}, 1)
    acc.add({"loss": torch.tensor(3.0), "kl": 0.0}, 3)  # numbers are accepted beside tensors
    means = acc.means()
    assert list(means) == ["loss", "kl"]
    assert float(means["loss"]) == pytest.approx(2.5) and float(means["kl"]) == pytest.approx(1.0)
    # a GAN's generator loss comes every other batch: its mean is over the batches that had it
    acc.reset()
    acc.add({"loss_d": torch.tensor(1.0)}, 2)
    acc.add({"loss_d": torch.tensor(3.0), "loss_g": torch.tensor(10.0)}, 2)
    acc.add({"loss_d": torch.tensor(5.0)}, 2)
    assert {k: float(v) for k, v in acc.means().items()} == pytest.approx({"loss_d": 3.0, "loss_g": 10.0})
    acc.reset()
    assert acc.means() == {}


def test_gan_terms_reach_the_epoch_means():
    torch.manual_seed(0)
    model = create_generator("cgan", image_size=16, num_classes=2, latent_dim=8, generator_channels=8,
                             discriminator_channels=8, n_critic=2)
    trainer = quiet_trainer(4, log_every_n_steps=50, limit_val_batches=0)
    trainer.fit(model, datamodule=phantom_data(2, 16, num_train=64, batch_size=16))
    metrics = trainer.callback_metrics
    assert {"train/loss_d", "train/loss_g", "train/loss", "train/loss_d_epoch", "train/loss_g_epoch"} <= set(metrics)
    assert float(metrics["train/loss"]) == float(metrics["train/loss_g"])  # the loss is the generator's
    assert all(torch.isfinite(metrics[k]) for k in ("train/loss_d", "train/loss_g"))


@pytest.mark.parametrize("name", ["vae", "ddpm"])
def test_csv_has_step_values_at_the_log_interval_and_exact_epoch_means(name, tmp_path):
    model = tiny(name)
    losses: list[list[float]] = [[], []]
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: losses[tr.current_epoch].append(
        float(out["loss"])))
    trainer = quiet_trainer(-1, max_epochs=2, log_every_n_steps=2, limit_val_batches=0, callbacks=[record],
                            logger=CSVLogger(tmp_path, name="run", version=0))
    trainer.fit(model, datamodule=phantom_data(2, 16, num_train=64, batch_size=16))  # 4 batches per epoch
    rows = list(csv.DictReader((tmp_path / "run" / "version_0" / "metrics.csv").open()))
    steps = {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}
    every_loss = losses[0] + losses[1]
    assert sorted(steps) == [1, 3, 5, 7]  # written after batches 2, 4, 6, 8
    for step, value in steps.items():
        assert value == pytest.approx(every_loss[step], rel=1e-5)  # that batch's value, not a stale one
    epochs = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert epochs == pytest.approx([sum(e) / len(e) for e in losses], rel=1e-5)  # equal batches: plain mean
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(epochs[-1], rel=1e-6)
    if name == "vae":
        assert {"train/recon_epoch", "train/kl_epoch", "train/recon_step"} <= set(rows[0])


def test_progress_bar_sees_the_loss_of_every_batch():
    model = tiny("vae")
    seen: list[tuple[float, float]] = []
    record = LambdaCallback(on_train_batch_end=lambda tr, m, out, b, i: seen.append(
        (float(tr.progress_bar_metrics["train/loss_step"]), float(out["loss"]))))
    trainer = quiet_trainer(3, enable_progress_bar=True, log_every_n_steps=50, limit_val_batches=0,
                            callbacks=[record])
    trainer.fit(model, datamodule=phantom_data(2, 16, num_train=64, batch_size=16))
    assert len(seen) == 3
    for shown, loss in seen:
        assert shown == pytest.approx(loss, rel=1e-5)
