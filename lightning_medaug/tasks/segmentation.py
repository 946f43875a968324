"""Semantic segmentation (2D with segmentation_models_pytorch, 3D with MONAI's UNet).

Trained with Dice + cross-entropy (Milletari et al. 2016, "V-Net", for the Dice loss), scored
with the per-image mean Dice. Binary (``num_classes=1``: foreground probability) or multi-class
(``num_classes=K``: masks hold class indices ``0..K-1``, 0 = background).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import Tensor, nn
from torchmetrics.segmentation import DiceScore

from lightning_medaug.registry import register_task
from lightning_medaug.tasks.base import EVAL_STAGES, DownstreamTask
from lightning_medaug.validation import check_at_least, check_spatial_dims

__all__ = ["SegmentationTask", "build_segmenter"]


def _check_smp_names(arch: str, encoder: str) -> None:
    archs = list(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in archs:
        close = difflib.get_close_matches(arch.lower(), archs, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown 2D segmentation arch {arch!r}.{hint} Available (smp): {', '.join(archs)}.")
    if encoder.startswith("tu-"):  # smp's prefix for any timm backbone
        if not timm.is_model(encoder[3:]):
            raise ValueError(f"unknown encoder {encoder!r}: {encoder[3:]!r} is not a timm model name "
                             "(see timm.list_models())")
        return
    encoders = smp.encoders.get_encoder_names()
    if encoder not in encoders:
        close = difflib.get_close_matches(encoder, encoders, n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown 2D segmentation encoder {encoder!r}.{hint} See "
                         "segmentation_models_pytorch.encoders.get_encoder_names(), or use 'tu-<timm name>'.")


def build_segmenter(arch: str, encoder: str, spatial_dims: int, in_channels: int, out_channels: int,
                    channels: list[int]) -> tuple[nn.Module, int]:
    """Return ``(network, size_divisor)``: logits ``(N, out_channels, *S)`` for inputs whose
    spatial sizes are multiples of ``size_divisor``.

    2D: ``smp.create_model(arch, encoder_name=encoder, encoder_weights=None)``. 3D: MONAI ``UNet``
    with ``channels`` (``arch`` must be ``"Unet"``; ``encoder`` is not used).
    """
    if spatial_dims == 2:
        _check_smp_names(arch, encoder)
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                               classes=out_channels)
        divisible = getattr(net, "requires_divisible_input_shape", True)
        return net, (net.encoder.output_stride if divisible else 1)
    if arch.lower() != "unet":
        raise ValueError(f"3D segmentation supports arch='Unet' (MONAI UNet) only, got {arch!r}")
    if len(channels) < 2 or min(channels) < 1:
        raise ValueError(f"channels must list at least 2 positive widths, got {channels}")
    net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
               strides=(2,) * (len(channels) - 1), num_res_units=2)
    # Each stride-2 level halves the size; odd sizes make the skip connections mismatch.
    return net, 2 ** (len(channels) - 1)


@register_task("segmentation")
class SegmentationTask(DownstreamTask):
    """Segmentation network trained with ``monai.losses.DiceCELoss``, AdamW + cosine.

    Logs ``train/loss``, ``val/loss``, ``val/dice``, ``test/loss``, ``test/dice``. Dice is
    torchmetrics' ``DiceScore`` averaged per image (background excluded for multi-class); its
    per-image states are gathered across processes, so the value is exact under DDP.
    ``predict_step`` returns the foreground probability ``(N, 1, *S)`` (binary) or the softmax
    ``(N, K, *S)`` (multi-class).

    Args:
        arch: 2D: an smp architecture ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", ...);
            3D: "Unet" (MONAI).
        encoder: 2D: an smp encoder name or ``"tu-<timm name>"``; randomly initialised. Unused in 3D.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: 1 for binary foreground masks in {0, 1}; K >= 2 for masks of class indices.
        channels: widths of the 3D UNet levels (2 ** (len - 1) must divide the volume size).
        lr, weight_decay: AdamW settings, cosine decay over the run.
        image_key, mask_key: keys of dict batches; tuple batches are ``(image, mask)``.

    Input sizes must be multiples of the network's ``size_divisor`` (32 for smp's 5-level
    encoders); otherwise a ``ValueError`` names the nearest valid size to resize or pad to.
    """

    def __init__(self, arch: str = "Unet", encoder: str = "resnet18", spatial_dims: int = 2, in_channels: int = 1,
                 num_classes: int = 1, channels: list[int] | None = None, lr: float = 1e-3,
                 weight_decay: float = 1e-4, image_key: str = "image", mask_key: str = "mask"):
        super().__init__(lr, weight_decay, image_key=image_key, mask_key=mask_key)
        check_spatial_dims(spatial_dims)
        check_at_least(1, in_channels=in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be 1 (binary foreground) or the number of classes, got {num_classes}")
        self.save_hyperparameters()
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, num_classes
        self.binary = num_classes == 1
        self.net, self.size_divisor = build_segmenter(arch, encoder, spatial_dims, in_channels, num_classes,
                                                      list(channels or [16, 32, 64, 128]))
        if self.binary:
            self.loss_fn = DiceCELoss(sigmoid=True)  # BCE-with-logits + soft Dice on the one channel
        else:
            self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.metrics = nn.ModuleDict({stage: DiceScore(
            num_classes=num_classes, include_background=self.binary, average="macro",
            input_format="one-hot" if self.binary else "index") for stage in EVAL_STAGES})

    def _check_size(self, image: Tensor) -> None:
        spatial = tuple(image.shape[2:])
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"expected images (N, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) for "
                             f"spatial_dims={self.spatial_dims}, got shape {tuple(image.shape)}")
        if any(s % self.size_divisor for s in spatial):
            fixed = tuple(math.ceil(s / self.size_divisor) * self.size_divisor for s in spatial)
            raise ValueError(f"image size {spatial} is not a multiple of {self.size_divisor}, which "
                             f"{self.hparams.arch!r} needs; resize or pad the images to {fixed}")

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(N, num_classes, *S)``."""
        self._check_size(image)
        return self.net(image)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Foreground sigmoid (binary) or softmax over classes; float32."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.binary else logits.softmax(dim=1)

    def shared_step(self, batch: Any, stage: str) -> Tensor:
        image, _, mask = self.unpack(batch)
        if mask is None:
            raise ValueError("SegmentationTask needs masks: dict batches need a "
                             f"{self.mask_key!r} entry, tuple batches an (image, mask) pair")
        mask = mask.float()
        if mask.ndim == image.ndim - 1:  # (N, *S) -> (N, 1, *S)
            mask = mask.unsqueeze(1)
        logits = self(image)
        loss = self.loss_fn(logits.float(), mask)
        n = image.shape[0]
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, sync_dist=True,
                 batch_size=n, prog_bar=stage == "train")
        if stage in self.metrics:
            logits = logits.detach()
            if self.binary:
                preds, target = (logits > 0).long(), (mask > 0.5).long()
            else:
                preds, target = logits.argmax(dim=1), mask.squeeze(1).round().long()
            self.metrics[stage].update(preds, target)
            self.log(f"{stage}/dice", self.metrics[stage], on_step=False, on_epoch=True, batch_size=n)
        return loss

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Per-pixel probabilities, see the class docstring."""
        return self.probabilities(self(self.unpack(batch).image))
