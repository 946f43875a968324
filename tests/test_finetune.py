"""FineTuneFrom: real Trainer runs on tiny phantoms; pretrain, save, fine-tune with frozen layers."""

from __future__ import annotations

import logging
import socket

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.finetune import (
    FineTuneFrom,
    freeze_parameters,
    transfer_weights,
)
from lightning_medaug.generative.base import CHECKPOINT_KEY
from lightning_medaug.hashing import file_digest
from lightning_medaug.hub import PretrainedDownloadError, load_generator_checkpoint
from lightning_medaug.registry import create_generator

FREEZE = ["generator.blocks.0.*", "discriminator.features.0.*"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cgan(**overrides):
    kwargs = {"image_size": 16, "latent_dim": 16, "generator_channels": 8, "discriminator_channels": 8,
              "num_classes": 2, "lr_g": 2e-3, "lr_d": 2e-3}
    return create_generator("cgan", **{**kwargs, **overrides})


def vae():
    return create_generator("vae", spatial_dims=2, image_size=16, channels=(8, 16), norm_num_groups=4,
                            latent_channels=2, lr=3e-3)


def phantoms(num_train: int, seed: int, num_classes: int = 2) -> PhantomDataModule:
    return PhantomDataModule(image_size=16, num_classes=num_classes, num_train=num_train, num_val=4, num_test=4,
                             batch_size=16, seed=seed)


def trainer(max_steps: int, callbacks=(), **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     max_steps=max_steps, limit_val_batches=0, callbacks=list(callbacks), **kwargs)


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.fixture(scope="module")
def pretrained_cgan(tmp_path_factory):
    """A cGAN pretrained for 20 steps on 64 phantoms, saved with save_pretrained."""
    L.seed_everything(0)
    model = cgan()
    trainer(20).fit(model, phantoms(64, seed=0))
    return model, model.save_pretrained(tmp_path_factory.mktemp("source") / "cgan", training_parts=True)


def test_frozen_parameters_stay_bit_identical_and_the_rest_trains(pretrained_cgan):
    source, folder = pretrained_cgan
    L.seed_everything(1)
    model = cgan()
    callback = FineTuneFrom(str(folder), freeze=FREEZE)
    trainer(10, [callback]).fit(model, phantoms(16, seed=7))  # 16 images, one batch per epoch
    start, end = params(source), params(model)
    frozen = set(callback.frozen)
    assert frozen and {n.split(".")[0] for n in frozen} == {"generator", "discriminator"}
    for name in frozen:  # the source's values (so it was loaded), unchanged by 5 D and 5 G steps
        assert torch.equal(end[name], start[name]), name
        assert not dict(model.named_parameters())[name].requires_grad
    trained = [n for n in start if n not in frozen and not n.startswith("ema.")]
    assert all(not torch.equal(end[n], start[n]) for n in trained)
    assert callback.loaded and callback.reinitialised == []


def test_pretrained_start_has_lower_initial_loss_than_scratch(tmp_path):
    L.seed_everything(0)
    source = vae()
    trainer(20).fit(source, phantoms(64, seed=0))
    folder = source.save_pretrained(tmp_path / "vae")

    class FirstLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.loss = float(outputs["loss"]) if not hasattr(self, "loss") else self.loss

    losses = {}
    for start, callbacks in (("scratch", []), ("pretrained", [FineTuneFrom(str(folder))])):
        L.seed_everything(1)
        first = FirstLoss()
        trainer(1, callbacks + [first]).fit(vae(), phantoms(16, seed=7))
        losses[start] = first.loss
    assert losses["pretrained"] < 0.5 * losses["scratch"], losses


def test_new_num_classes_reinitialises_only_the_label_embeddings(pretrained_cgan, caplog):
    source, folder = pretrained_cgan
    target = cgan(num_classes=3)
    initial = target.state_dict()
    skipped = transfer_weights(source, target)
    assert skipped and all(".embed." in key for key in skipped)
    after, src = target.state_dict(), source.state_dict()
    for key, value in after.items():
        assert torch.equal(value, initial[key] if key in skipped else src[key]), key
    assert "generator.embed.weight" in skipped and "ema.averaged.module.embed.weight" in skipped
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer(2, [FineTuneFrom(str(folder))]).fit(cgan(num_classes=3), phantoms(16, seed=7, num_classes=3))
    assert "num_classes 2 -> 3" in caplog.text and "re-initialised" in caplog.text


def test_mismatches_raise_value_errors_naming_the_first_one(pretrained_cgan):
    source, _ = pretrained_cgan
    with pytest.raises(ValueError, match=r"generator.project.weight has shape \(\d+, 48\) there and \(\d+, 56\) here.*"
                                         r"latent_dim: 16 there, 24 here"):
        transfer_weights(source, cgan(latent_dim=24))
    with pytest.raises(ValueError, match="holds a 'cgan' generator but the model being trained is a 'dcgan'"):
        transfer_weights(source, create_generator("dcgan", image_size=16, latent_dim=16, generator_channels=8,
                                                  discriminator_channels=8))
    with pytest.raises(ValueError, match="exists in only one of them.*use_ema"):
        transfer_weights(source, cgan(use_ema=False))
    with pytest.raises(ValueError, match="has shape"):  # embeddings of the same class count must match
        transfer_weights(source, cgan(embed_dim=4))
    loose = cgan(latent_dim=24)
    skipped = transfer_weights(source, loose, strict_shapes=False)
    assert {"generator.project.weight", "ema.averaged.module.project.weight"} <= set(skipped)
    key = "generator.head.0.conv.weight"
    assert torch.equal(loose.state_dict()[key], source.state_dict()[key])
    with pytest.raises(ValueError, match="matches no parameter.*generator.blocks"):
        freeze_parameters(cgan(), ["generator.block.0.*"])
    with pytest.raises(ValueError, match="list of glob patterns"):
        FineTuneFrom("x", freeze="generator.*")
    with pytest.raises(ValueError, match="source is empty"):
        FineTuneFrom(" ")


def test_resume_keeps_the_checkpoint_and_never_reads_the_source(pretrained_cgan, tmp_path):
    _, folder = pretrained_cgan
    L.seed_everything(2)
    model = cgan()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(4, [FineTuneFrom(str(folder), freeze=FREEZE), ckpt], enable_checkpointing=True) \
        .fit(model, phantoms(16, seed=7))
    with socket.socket() as s:  # a port nobody listens on: loading the source would fail
        s.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{s.getsockname()[1]}/cgan.zip"
    resumed = cgan()
    callback = FineTuneFrom(unreachable, freeze=FREEZE)
    trainer(8, [callback]).fit(resumed, phantoms(16, seed=7), ckpt_path=str(tmp_path / "last.ckpt"))
    after, before = params(resumed), params(model)
    for name in callback.frozen:  # still frozen after the resume, at the checkpoint's (= source's) values
        assert torch.equal(after[name], before[name])
    assert not torch.equal(after["generator.project.weight"], before["generator.project.weight"])  # it trained on
    with pytest.raises(PretrainedDownloadError, match="could not download"):  # without a checkpoint it is read
        trainer(1, [FineTuneFrom(unreachable)]).fit(cgan(), phantoms(16, seed=7))


@pytest.fixture(scope="module")
def cgan_checkpoint(tmp_path_factory):
    """The .ckpt a plain Trainer.fit of a cGAN writes (6 steps on 32 phantoms)."""
    folder = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0)
    trainer(6, [ModelCheckpoint(dirpath=folder, filename="cgan")], enable_checkpointing=True) \
        .fit(cgan(), phantoms(32, seed=0))
    return folder / "cgan.ckpt"


def test_a_lightning_checkpoint_is_a_source_with_frozen_layers(cgan_checkpoint):
    saved = torch.load(cgan_checkpoint, map_location="cpu", weights_only=True)["state_dict"]

    class FirstStep(L.Callback):  # the weights training starts from
        def on_train_start(self, trainer, pl_module):
            self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    first = FirstStep()
    L.seed_everything(1)
    model = cgan()
    callback = FineTuneFrom(str(cgan_checkpoint), freeze=FREEZE, sha256=file_digest(cgan_checkpoint))
    trainer(4, [callback, first]).fit(model, phantoms(16, seed=7))
    assert first.start.keys() == saved.keys() and callback.reinitialised == []
    assert all(torch.equal(first.start[k], saved[k]) for k in saved)  # every tensor is the checkpoint's
    end = params(model)
    assert callback.frozen and all(torch.equal(end[n], saved[n]) for n in callback.frozen)
    assert not torch.equal(end["generator.project.weight"], saved["generator.project.weight"])  # the rest trained
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        trainer(1, [FineTuneFrom(str(cgan_checkpoint), sha256="0" * 64)]).fit(cgan(), phantoms(16, seed=7))


def test_a_checkpoint_of_another_family_or_of_no_generator_is_refused(cgan_checkpoint, tmp_path):
    L.seed_everything(0)
    other = vae()
    trainer(1, [ModelCheckpoint(dirpath=tmp_path, filename="vae")], enable_checkpointing=True) \
        .fit(other, phantoms(16, seed=0))
    target = cgan()
    with pytest.raises(ValueError, match=rf"vae.ckpt holds a 'vae' generator but the model being trained is a 'cgan': "
                                         rf"a {type(target).__name__} cannot start from a {type(other).__name__}"):
        trainer(1, [FineTuneFrom(str(tmp_path / "vae.ckpt"))]).fit(target, phantoms(16, seed=7))
    # a checkpoint of `medaug fit` written before the record: LightningCLI's _class_path names the family
    checkpoint = torch.load(cgan_checkpoint, map_location="cpu", weights_only=True)
    record = checkpoint.pop(CHECKPOINT_KEY)
    checkpoint["hyper_parameters"]["_class_path"] = "lightning_medaug.generative.ConditionalGAN"
    torch.save(checkpoint, tmp_path / "cli.ckpt")
    loaded = load_generator_checkpoint(tmp_path / "cli.ckpt")
    assert type(loaded).__name__ == "ConditionalGAN" and record["generator"] == "cgan"
    key = "generator.project.weight"
    assert torch.equal(loaded.state_dict()[key], checkpoint["state_dict"][key])
    checkpoint["hyper_parameters"]["_class_path"] = "lightning_medaug.tasks.ClassificationTask"
    torch.save(checkpoint, tmp_path / "task.ckpt")
    with pytest.raises(ValueError, match=r"tasks.ClassificationTask, which is not a registered generator"):
        load_generator_checkpoint(tmp_path / "task.ckpt")
    del checkpoint["hyper_parameters"]["_class_path"]
    torch.save(checkpoint, tmp_path / "anonymous.ckpt")
    with pytest.raises(ValueError, match="does not say which model it holds"):
        load_generator_checkpoint(tmp_path / "anonymous.ckpt")
