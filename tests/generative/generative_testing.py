"""Pieces every generator test uses: a seeded ``torch.Generator`` and a quiet CPU ``Trainer``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


def seeded(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same samples."""
    return torch.Generator().manual_seed(seed)


def phantom_data(spatial_dims: int, image_size: int, num_train: int = 64, batch_size: int = 16):
    """A small phantom data module (labels 0/1, 8 validation and 8 test samples)."""
    from lightning_medaug.data import PhantomDataModule

    return PhantomDataModule(spatial_dims=spatial_dims, image_size=image_size, num_train=num_train, num_val=8,
                             num_test=8, batch_size=batch_size)


def quiet_trainer(max_steps: int, **kwargs: Any) -> L.Trainer:
    """A CPU trainer for ``max_steps`` steps with no logger, checkpoints, progress bar or summary;
    ``kwargs`` add or override Trainer arguments."""
    defaults = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "max_steps": max_steps}
    return L.Trainer(**{**defaults, **kwargs})


def assert_exports_round_trip(model, folder):
    """``save_pretrained`` round trips bit for bit: the sampling weights of the default (inference)
    export, and every weight of a ``training_parts=True`` export. Returns the inference export loaded."""
    import torch

    from lightning_medaug.generative import load_generator

    training_only = model.training_only_prefixes()
    lean = load_generator(model.save_pretrained(folder / "inference"))
    full = load_generator(model.save_pretrained(folder / "full", training_parts=True))
    for key, value in model.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
        if not key.startswith(training_only):
            assert torch.equal(value, lean.state_dict()[key]), key
    return lean


def assert_distinct_samples(samples) -> None:
    """Each of the ``n`` samples is its own image: no two are equal (a noise or label draw shared
    across the batch, or a sampler that ignores its noise, repeats one image)."""
    import torch

    flat = samples.flatten(1).double()
    same = torch.cdist(flat, flat) == 0
    assert not (same & ~torch.eye(len(flat), dtype=torch.bool)).any(), "two samples of one batch are equal"


class RecordRealLogits(L.Callback):
    """Records, per epoch, a GAN discriminator's first output of every training batch: each D step
    scores the (augmented) reals before anything else, so these are the logits ``rt`` and ADA read."""

    def __init__(self) -> None:
        self.epochs: list[list[torch.Tensor]] = []
        self._epoch: list[torch.Tensor] = []
        self._batch: list[torch.Tensor] = []
        self._handle = None

    def on_train_start(self, trainer, model) -> None:
        def record(module, args, output):
            self._batch.append(output.detach().float().flatten())

        self._handle = model.discriminator.register_forward_hook(record)

    def on_train_epoch_start(self, trainer, model) -> None:
        self._epoch = []

    def on_train_batch_start(self, trainer, model, batch, batch_idx) -> None:
        self._batch = []

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx) -> None:
        self._epoch.append(self._batch[0])

    def on_train_epoch_end(self, trainer, model) -> None:
        self.epochs.append(self._epoch)

    def on_train_end(self, trainer, model) -> None:
        self._handle.remove()

    @property
    def batches(self) -> list[torch.Tensor]:
        """The real logits of every batch, in training order."""
        return [logits for epoch in self.epochs for logits in epoch]

    def last_epoch_rt(self) -> float:
        """``E[sign D(real)]`` over the last epoch's reals: what ``train/rt`` (an epoch mean) must be."""
        return torch.cat(self.epochs[-1]).sign().mean().item()
