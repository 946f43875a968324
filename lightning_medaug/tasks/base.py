"""The shared training loop of the downstream tasks.

Every task (classification, segmentation, detection) is a LightningModule that the user trains
unchanged on real data, on synthetic data or on a mix of both. This base holds what they share:
one step for train/val/test, AdamW with a cosine learning-rate schedule stepped per optimizer
step (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"; 2017, "SGDR"), and
validation of the optimizer arguments.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_medaug.data.batch import Batch, unpack_batch

__all__ = ["EVAL_STAGES", "DownstreamTask"]

#: Stages that score metrics, each with its own metric objects; keys are ``"{stage}/{name}"``.
EVAL_STAGES: tuple[str, ...] = ("val", "test")


class DownstreamTask(L.LightningModule):
    """Base of the downstream tasks: one shared step, AdamW + cosine schedule.

    Subclasses implement :meth:`shared_step` (and ``predict_step``), call
    ``super().__init__(lr, weight_decay, image_key, label_key, mask_key)`` and then
    ``self.save_hyperparameters()``.

    Args:
        lr: peak learning rate of AdamW.
        weight_decay: decoupled weight decay of AdamW.
        image_key, label_key, mask_key: dictionary keys read from dict batches (tuple batches
            are read by position, see :func:`lightning_medaug.data.batch.unpack_batch`).
    """

    def __init__(self, lr: float = 1e-3, weight_decay: float = 1e-4, image_key: str = "image",
                 label_key: str = "label", mask_key: str = "mask"):
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {weight_decay}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.image_key, self.label_key, self.mask_key = image_key, label_key, mask_key

    # -- steps ----------------------------------------------------------------------------
    def unpack(self, batch: Any) -> Batch:
        """Read a dict or tuple batch into ``Batch(image, label, mask)``."""
        return unpack_batch(batch, self.image_key, self.label_key, self.mask_key)

    def shared_step(self, batch: Any, stage: str) -> Tensor | None:
        """Compute the loss (train) or update the metrics (val/test) of one batch; subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} must implement shared_step(batch, stage)")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, "test")

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW, with a cosine decay to 0 over the run when its length is known."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            # An unbounded run (max_steps=-1, max_epochs=-1) has no end to decay towards.
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
