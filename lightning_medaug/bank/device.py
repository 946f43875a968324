"""The device a generator samples on, as the ``--device`` option names it."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None, fallback: torch.device) -> torch.device:
    """``"auto"``: this rank's GPU when there is one, else the CPU; ``None``: ``fallback``."""
    if device is None:
        return fallback
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
