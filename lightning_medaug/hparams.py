"""Saving a module's own init arguments as its hyperparameters, also when it is built nested.

LightningCLI hands the config of the top-level ``data`` (or ``model``) entry to every
``save_hyperparameters`` call made while that entry is instantiated. A data module built inside
another one (``SyntheticMixDataModule(datamodule=MedMNISTDataModule(...))``) would then record
the wrapper's arguments instead of its own. Reading the caller's frame directly avoids that.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.utilities.parsing import collect_init_args

__all__ = ["save_own_hyperparameters"]


def save_own_hyperparameters(obj: HyperparametersMixin, ignore: Sequence[str] = ()) -> None:
    """Call from ``__init__`` instead of ``self.save_hyperparameters(ignore=...)``."""
    frame = inspect.currentframe().f_back  # the caller's __init__
    init_args: dict[str, Any] = {}
    for local_args in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
        init_args.update(local_args)
    obj.save_hyperparameters({k: v for k, v in init_args.items() if k not in set(ignore)})
