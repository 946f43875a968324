"""Helpers of the conformance suite: pick the synthetic source, run one epoch as a user would."""

from __future__ import annotations

import lightning as L

from lightning_medaug.mixing import SyntheticMixDataModule

SOURCES = ["bank", "model"]


def source_kwargs(source: str, name: str, generators, banks) -> dict:
    """``bank=`` or ``model=`` for the mixer, by the test's ``source`` parameter."""
    return {"bank": banks(name)} if source == "bank" else {"model": generators(name)}


def fit_one_epoch(model: L.LightningModule, datamodule: L.LightningDataModule, **trainer_kwargs) -> L.Trainer:
    """One epoch with a real Trainer, as the user's own script would run it (no logger, no checkpoint)."""
    options = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    options.update(trainer_kwargs)
    trainer = L.Trainer(**options)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def mix(user: L.LightningDataModule, source: str, name: str, generators, banks, **kwargs) -> SyntheticMixDataModule:
    return SyntheticMixDataModule(user, **source_kwargs(source, name, generators, banks), **kwargs)
