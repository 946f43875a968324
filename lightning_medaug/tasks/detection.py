"""2D object detection with torchvision's FCOS or RetinaNet, boxes derived from masks.

FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection". RetinaNet: Lin et
al. 2017, "Focal Loss for Dense Object Detection". Both on a randomly initialised ResNet + FPN
(Lin et al. 2017, "Feature Pyramid Networks") small enough for a CPU.
"""

from __future__ import annotations

from typing import Any

import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lightning_medaug.registry import register_task
from lightning_medaug.tasks.base import EVAL_STAGES, DownstreamTask
from lightning_medaug.tasks.box_map import BoxMeanAveragePrecision
from lightning_medaug.tasks.boxes import masks_to_boxes

__all__ = ["DETECTION_ARCHS", "DETECTION_BACKBONES", "DetectionTask", "build_detector"]

DETECTION_ARCHS: tuple[str, ...] = ("fcos", "retinanet")
DETECTION_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")


def _fpn_backbone(backbone: str, in_channels: int, fpn_channels: int) -> BackboneWithFPN:
    """ResNet (BatchNorm, since nothing is pretrained) + FPN on C3-C5 with P6/P7, as FCOS/RetinaNet use."""
    resnet = torchvision.models.get_model(backbone, weights=None, norm_layer=nn.BatchNorm2d)
    # Read the image's own channels instead of repeating a grey image into 3 identical ones.
    resnet.conv1 = nn.Conv2d(in_channels, resnet.conv1.out_channels, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    stage2 = resnet.inplanes // 8  # width of layer1's output; layers 2-4 double it
    return BackboneWithFPN(resnet, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                           in_channels_list=[stage2 * 2, stage2 * 4, stage2 * 8], out_channels=fpn_channels,
                           extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))


def build_detector(arch: str, backbone: str, in_channels: int, num_classes: int, min_size: int, max_size: int,
                   fpn_channels: int = 256, score_thresh: float = 0.05) -> nn.Module:
    """A torchvision detector for images in [-1, 1] with ``in_channels`` channels.

    ``num_classes`` counts foreground classes. FCOS and RetinaNet score each class with its own
    sigmoid and need no background channel, so the network's labels are ``0..num_classes-1``
    (:class:`DetectionTask` shifts them to our ``1..num_classes``). Images are resized so their
    short side is ``min_size`` (long side at most ``max_size``).
    """
    body = _fpn_backbone(backbone, in_channels, fpn_channels)
    # Our images are already normalised to [-1, 1]; make the detector's own normalisation a no-op.
    common = {"num_classes": num_classes, "min_size": min_size, "max_size": max_size,
              "image_mean": [0.0] * in_channels, "image_std": [1.0] * in_channels, "score_thresh": score_thresh}
    if arch == "fcos":
        return FCOS(body, **common)
    # RetinaNet's default anchors (32-512 px) are for 800 px photos; scale them to the resized image.
    base = max(4, min_size // 16)
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (base * 2**k for k in range(5)))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(body, anchor_generator=anchors, **common)


@register_task("detection")
class DetectionTask(DownstreamTask):
    """Detector of the connected components of segmentation masks, 2D only.

    Targets come from the batch's masks through :func:`masks_to_boxes` (one box per component;
    images with empty masks have none), so any image+mask data module trains it. The training
    loss is the sum of the detector's losses (``train/loss``). Validation and test score the
    detections with :class:`BoxMeanAveragePrecision` (COCO box mAP): ``val/map``, ``val/map_50``,
    ``test/map``, ``test/map_50``. ``predict_step`` returns torchvision's list of
    ``{"boxes", "scores", "labels"}`` per image.

    Args:
        arch: "fcos" or "retinanet".
        backbone: "resnet18", "resnet34", "resnet50" or "resnet101" (torchvision, randomly initialised).
        spatial_dims: must be 2 (torchvision's detectors are 2D).
        in_channels: image channels.
        num_classes: foreground classes; 1 for binary masks, K for masks of class indices 0..K.
        min_size, max_size: images are resized so the short side is ``min_size`` and the long
            side at most ``max_size`` (boxes are mapped back to the input size).
        fpn_channels: width of the FPN and the heads (256 in the papers; smaller is faster).
        score_thresh: detections below this score are dropped before evaluation.
        lr, weight_decay: AdamW settings, cosine decay over the run.
        image_key, mask_key: keys of dict batches; tuple batches are ``(image, mask)``.
    """

    def __init__(self, arch: str = "fcos", backbone: str = "resnet18", spatial_dims: int = 2, in_channels: int = 1,
                 num_classes: int = 1, min_size: int = 128, max_size: int = 256, fpn_channels: int = 256,
                 score_thresh: float = 0.05, lr: float = 1e-4, weight_decay: float = 1e-4, image_key: str = "image",
                 mask_key: str = "mask"):
        super().__init__(lr, weight_decay, image_key=image_key, mask_key=mask_key)
        if spatial_dims != 2:
            raise ValueError(f"DetectionTask is 2D only (torchvision detectors), got spatial_dims={spatial_dims}; "
                             "for 3D volumes use SegmentationTask or detect on 2D slices")
        if arch not in DETECTION_ARCHS:
            raise ValueError(f"unknown detection arch {arch!r}; choose one of {', '.join(DETECTION_ARCHS)}")
        if backbone not in DETECTION_BACKBONES:
            raise ValueError(f"unknown detection backbone {backbone!r}; choose one of {', '.join(DETECTION_BACKBONES)}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be at least 1, got {in_channels} and {num_classes}")
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        if fpn_channels < 8:
            raise ValueError(f"fpn_channels must be at least 8, got {fpn_channels}")
        if not 0.0 <= score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh}")
        self.save_hyperparameters()
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, num_classes
        self.net = build_detector(arch, backbone, in_channels, num_classes, min_size, max_size, fpn_channels,
                                  score_thresh)
        self.metrics = nn.ModuleDict({stage: BoxMeanAveragePrecision(num_classes) for stage in EVAL_STAGES})

    def forward(self, image: Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Loss dict in training mode (needs ``targets``), detections per image in eval mode.

        Labels in ``targets`` and in the detections are ``1..num_classes`` (0 is background).
        """
        if image.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(image.shape)}")
        if targets is not None:
            targets = [{**t, "labels": t["labels"] - 1} for t in targets]
        out = self.net(list(image.float()), targets)
        if isinstance(out, dict):  # training: the loss dict
            return out
        return [{**d, "labels": d["labels"] + 1} for d in out]

    def shared_step(self, batch: Any, stage: str) -> Tensor | None:
        image, _, mask = self.unpack(batch)
        if mask is None:
            raise ValueError("DetectionTask derives boxes from masks: dict batches need a "
                             f"{self.mask_key!r} entry, tuple batches an (image, mask) pair")
        targets = masks_to_boxes(mask, self.num_classes)
        n = image.shape[0]
        if stage == "train":
            losses = self(image, targets)
            loss = sum(losses.values())
            self.log("train/loss", loss, on_step=True, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True)
            return loss
        # torchvision detectors return detections, not losses, in eval mode: val/test report mAP.
        self.metrics[stage].update(self(image), targets)
        return None

    def _log_map(self, stage: str) -> None:
        values = self.metrics[stage].compute()  # already gathered across processes
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if k in ("map", "map_50")}, sync_dist=True)
        self.metrics[stage].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_map("val")

    def on_test_epoch_end(self) -> None:
        self._log_map("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        """Detections ``[{"boxes", "scores", "labels"}, ...]``, one dict per image."""
        return self(self.unpack(batch).image)
