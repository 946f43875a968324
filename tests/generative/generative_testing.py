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
