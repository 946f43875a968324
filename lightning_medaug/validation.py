"""Argument checks shared by constructors: one wording for the same mistake everywhere.

Each raises ``ValueError`` naming the argument, the rule and the value given, as the style guide
asks of ``__init__`` validation (never ``assert``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["check_adam_betas", "check_at_least", "check_channels", "check_choice", "check_loader_args",
           "check_non_negative", "check_positive", "check_spatial_dims"]


def check_at_least(minimum: int, **values: int) -> None:
    """Every named value is ``>= minimum`` (e.g. ``check_at_least(1, latent_dim=latent_dim)``)."""
    for name, value in values.items():
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_spatial_dims(spatial_dims: int) -> None:
    """2 for images, 3 for volumes (MONAI's ``spatial_dims``)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def check_non_negative(**values: float) -> None:
    """Every named value is ``>= 0`` (loss weights, warm-up lengths)."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_channels(channels: tuple[int, ...]) -> None:
    """A non-empty sequence of positive channel counts (one per resolution level)."""
    if not channels or min(channels) < 1:
        raise ValueError(f"channels must be a non-empty list of positive ints, got {list(channels)}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(**values: float) -> None:
    """Every named value is ``> 0`` (learning rates, temperatures)."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def check_adam_betas(beta1: float, beta2: float) -> None:
    """Adam's betas lie in [0, 1)."""
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"Adam betas must lie in [0, 1), got beta1={beta1}, beta2={beta2}")


def check_loader_args(batch_size: int, num_workers: int, train_transforms: Callable[..., Any] | None) -> None:
    """The DataLoader arguments every data module takes."""
    check_at_least(1, batch_size=batch_size)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if train_transforms is not None and not callable(train_transforms):
        raise ValueError(f"train_transforms must be callable, got {type(train_transforms).__name__}")
