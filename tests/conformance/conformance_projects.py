"""Small user models, each reading its batches the way its community does; they count what they see."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F


class CountingModule(L.LightningModule):
    """A user's model; ``seen`` counts training samples, ``kinds`` the batch fields' types."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.net = nn.Sequential(conv(in_channels, 4, 3, padding=1), nn.ReLU(), pool, nn.Flatten(),
                                 nn.Linear(4, num_classes))
        self.seen = 0
        self.value_range = [float("inf"), float("-inf")]

    def count(self, images: torch.Tensor) -> None:
        self.seen += images.shape[0]
        self.value_range = [min(self.value_range[0], float(images.min())),
                            max(self.value_range[1], float(images.max()))]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TupleClassifier(CountingModule):
    """torchvision style: ``x, y = batch`` with integer class labels."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.count(x)
        return F.cross_entropy(self.net(x.float()), y.reshape(-1).long())


class DictClassifier(CountingModule):
    """MONAI style: ``batch["img"]``, ``batch["y"]`` under the project's own keys."""

    def __init__(self, image_key: str = "image", label_key: str = "label", **kwargs):
        super().__init__(**kwargs)
        self.image_key, self.label_key = image_key, label_key

    def training_step(self, batch, batch_idx):
        x, y = batch[self.image_key], batch[self.label_key]
        self.count(x)
        return F.cross_entropy(self.net(x.float()), torch.as_tensor(y).reshape(-1).long())


class MultiLabelClassifier(CountingModule):
    """Multi-label: multi-hot float targets and a BCE loss."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.count(x)
        assert y.dtype == torch.float32 and y.ndim == 2, (y.dtype, y.shape)
        return F.binary_cross_entropy_with_logits(self.net(x.float()), y)


class Segmenter(L.LightningModule):
    """Segmentation: image and mask, from tuples ``(image, mask)`` or dicts under the given keys."""

    def __init__(self, image_key: str | None = None, mask_key: str | None = None):
        super().__init__()
        self.image_key, self.mask_key = image_key, mask_key
        self.net = nn.Conv2d(1, 1, 3, padding=1)
        self.seen = 0

    def training_step(self, batch, batch_idx):
        x, m = (batch[self.image_key], batch[self.mask_key]) if self.image_key else batch
        assert x.shape[-2:] == m.shape[-2:], (x.shape, m.shape)
        self.seen += x.shape[0]
        return F.binary_cross_entropy_with_logits(self.net(x.float()), m.float())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)
