"""The Lightning behaviour the package relies on beyond its documented API, all in one place.

Each function names what it reads and why no public API does the job. ``tests/test_compat.py``
pins every one of them with a real ``Trainer``, so a Lightning release that changes one fails
that test loudly instead of silently changing training (checked against lightning 2.x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L

__all__ = ["attached_trainer", "batches_that_stepped", "wrap_train_dataloader"]


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The ``Trainer`` running ``module``, or ``None`` in a plain PyTorch loop.

    Public API only: ``LightningModule.trainer`` raises ``RuntimeError`` when no Trainer is
    attached. Under Fabric it returns a stand-in without the Trainer's logging settings, so a
    module run by Fabric counts as having no Trainer.
    """
    if module.fabric is not None:
        return None
    try:
        return module.trainer
    except RuntimeError:
        return None


def batches_that_stepped(trainer: L.Trainer) -> int:
    """Training batches whose optimisers have stepped so far: the step Lightning gives loggers.

    Reads the private ``trainer.fit_loop.epoch_loop._batches_that_stepped``. Lightning decides
    whether a batch's step metrics reach the loggers from this count (``(count + 1) %
    log_every_n_steps == 0``, in its private logger connector) and has no public equivalent:
    ``trainer.global_step`` counts optimiser steps, twice per batch for a GAN. Where the attribute
    is gone, ``global_step`` stands in, so logging keeps a cadence rather than failing training.
    """
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def wrap_train_dataloader(trainer: L.Trainer, wrap: Callable[[Any], Any]) -> Callable[[], None]:
    """Make the fit loop train on ``wrap(loader)`` for the train loader it would build; returns an undo.

    Call it in ``Callback.setup(stage='fit')``, before the loop builds the loader. Reads the
    private ``trainer.fit_loop._data_source``: the one object that yields the train loader
    whether it comes from a data module, the module's ``train_dataloader()`` hook or a loader
    passed to ``fit``. No public hook replaces the loader for every origin, and wrapping the
    user's data module would miss the other two. The undo drops the wrapper from that source,
    so a later ``fit`` builds the loader as before.
    """
    source = getattr(trainer.fit_loop, "_data_source", None)
    if source is None or not callable(getattr(source, "dataloader", None)):
        raise ValueError("this Lightning version hides the train loader's source (Trainer.fit_loop._data_source); "
                         "wrapping the train loader needs lightning>=2.0,<3")
    original = source.dataloader

    def wrapped() -> Any:
        return wrap(original())

    source.dataloader = wrapped  # an instance attribute, shadowing the source's own method

    def undo() -> None:
        vars(source).pop("dataloader", None)

    return undo
