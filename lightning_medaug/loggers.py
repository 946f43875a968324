"""Experiment loggers with defaults that suit clinical sites: nothing leaves the machine by accident."""

from __future__ import annotations

import netrc
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger", "wandb_logged_in"]


def wandb_logged_in() -> bool:
    """Whether wandb credentials exist (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


class WandbLogger(_LightningWandbLogger):
    """Lightning's wandb logger, offline unless the user has logged in to wandb.

    Offline runs are written under ``save_dir/wandb`` and can be uploaded later with
    ``wandb sync``. ``WANDB_MODE=offline`` always wins.

    Args:
        project: wandb project name.
        offline: force offline (True) or online (False); ``None`` decides from the credentials.
        **kwargs: passed to ``lightning.pytorch.loggers.WandbLogger``.
    """

    def __init__(self, project: str = "lightning-medaug", offline: bool | None = None, save_dir: str = "runs",
                 **kwargs: Any):
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_logged_in()
        super().__init__(project=project, offline=offline, save_dir=save_dir, **kwargs)
