"""Batch-level MixUp and CutMix for classification, with soft targets.

* ``"mixup"``: torchvision v2 ``MixUp`` (Zhang et al. 2018, "mixup: Beyond Empirical Risk
  Minimization"): each image becomes ``lam * x_i + (1 - lam) * x_j`` for a partner ``j`` in the
  batch (the batch rolled by one), ``lam ~ Beta(alpha, alpha)``, and its target the same mix of
  one-hot labels.
* ``"cutmix"``: torchvision v2 ``CutMix`` (Yun et al. 2019, "CutMix: Regularization Strategy to Train
  Strong Classifiers with Localizable Features"): a box of the partner is pasted in, and the target
  is mixed by the box's area.

Both act on whole training batches (N, C, *S) with integer labels and return soft targets (N, C)
for a cross-entropy with probabilities. MixUp is a per-voxel blend, so volumes are mixed too (as
4D tensors of the same values); CutMix cuts 2D boxes and is refused for volumes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

__all__ = ["BATCH_AUGMENTATIONS", "LabelMixing"]

#: Names accepted by :class:`LabelMixing` (and ``ClassificationTask(batch_augmentation=...)``).
BATCH_AUGMENTATIONS = ("mixup", "cutmix")


class LabelMixing:
    """MixUp or CutMix of a training batch: ``(images, labels) -> (mixed images, soft targets)``.

    Args:
        kind: ``"mixup"`` or ``"cutmix"``.
        num_classes: classes of the one-hot targets.
        alpha: parameter of the Beta(alpha, alpha) distribution of the mixing weight.
        spatial_dims: 2 or 3 (``"cutmix"``: 2 only).
    """

    def __init__(self, kind: str, num_classes: int, alpha: float = 1.0, spatial_dims: int = 2):
        if kind not in BATCH_AUGMENTATIONS:
            raise ValueError(f"batch augmentation must be one of {', '.join(BATCH_AUGMENTATIONS)}, got {kind!r}")
        if not alpha > 0:
            raise ValueError(f"the mixing alpha must be positive, got {alpha}")
        if kind == "cutmix" and spatial_dims != 2:
            raise ValueError("cutmix cuts 2D boxes (torchvision's CutMix); for volumes use batch_augmentation='mixup'")
        cls = v2.MixUp if kind == "mixup" else v2.CutMix
        self.kind, self.spatial_dims = kind, spatial_dims
        self.transform = cls(alpha=alpha, num_classes=num_classes)

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        # torchvision takes (N, C, H, W): a volume's depth joins its channels, the same values blended alike
        flat = images.reshape(images.shape[0], -1, *images.shape[-2:])
        mixed, targets = self.transform(flat, labels.long())
        return mixed.reshape(images.shape), targets.to(torch.float32)
