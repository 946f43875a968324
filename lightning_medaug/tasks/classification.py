"""Image classification (2D with timm, 3D with MONAI) as a LightningModule.

The downstream model of a data-augmentation study: train it on real, synthetic or mixed data
and compare AUROC / accuracy on the same real test split. Binary (``num_classes=2``),
multi-class and multi-label problems.
"""

from __future__ import annotations

import difflib
from typing import Any

import monai.networks.nets as monai_nets
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import AUROC, Accuracy, MetricCollection

from lightning_medaug.registry import register_task
from lightning_medaug.tasks.base import EVAL_STAGES, DownstreamTask
from lightning_medaug.tasks.label_mixing import LabelMixing
from lightning_medaug.validation import check_at_least, check_spatial_dims

__all__ = ["CLASSIFIER_3D_BACKBONES", "ClassificationTask", "build_classifier"]

#: 3D backbones: name -> MONAI constructor (all take ``spatial_dims``).
CLASSIFIER_3D_BACKBONES: dict[str, Any] = {
    "resnet10": monai_nets.resnet10,
    "resnet18": monai_nets.resnet18,
    "resnet34": monai_nets.resnet34,
    "resnet50": monai_nets.resnet50,
    "densenet121": monai_nets.DenseNet121,
}


def _timm_classifier(backbone: str, in_channels: int, num_outputs: int, small_input_stem: bool) -> nn.Module:
    """A randomly initialised timm model; ``small_input_stem`` rewires a ResNet stem for 28x28 inputs."""
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown 2D backbone {backbone!r}: not a timm model name.{hint} "
                         "See timm.list_models() for all names.")
    model = timm.create_model(backbone, pretrained=False, in_chans=in_channels, num_classes=num_outputs)
    if small_input_stem:
        if not (isinstance(model, timm.models.ResNet) and isinstance(model.conv1, nn.Conv2d)
                and isinstance(model.maxpool, nn.MaxPool2d)):
            raise ValueError(f"small_input_stem=True needs a timm ResNet with a single-conv stem and max-pool "
                             f"(e.g. 'resnet18'); {backbone!r} is not one. Use small_input_stem=False.")
        # MedMNIST v2 (Yang et al. 2023) "ResNet-18 (28)": a 3x3 stride-1 stem without max-pool keeps
        # the 28x28 resolution into layer1 instead of cutting it to 7x7.
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet init
        model.maxpool = nn.Identity()
    return model


def _monai_classifier(backbone: str, spatial_dims: int, in_channels: int, num_outputs: int,
                      small_input_stem: bool) -> nn.Module:
    """A randomly initialised MONAI ResNet or DenseNet121 for ``spatial_dims``."""
    if backbone not in CLASSIFIER_3D_BACKBONES:
        close = difflib.get_close_matches(backbone, CLASSIFIER_3D_BACKBONES, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown 3D backbone {backbone!r}.{hint} "
                         f"3D backbones (MONAI): {', '.join(CLASSIFIER_3D_BACKBONES)}.")
    if backbone.startswith("densenet"):
        if small_input_stem:
            raise ValueError("small_input_stem=True is only available for ResNet backbones, not "
                             f"{backbone!r}. Use small_input_stem=False or a 'resnet*' backbone.")
        return monai_nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_outputs)
    stem = {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True} if small_input_stem else {}
    return CLASSIFIER_3D_BACKBONES[backbone](spatial_dims=spatial_dims, n_input_channels=in_channels,
                                             num_classes=num_outputs, **stem)


def build_classifier(backbone: str, spatial_dims: int, in_channels: int, num_outputs: int,
                     small_input_stem: bool = False) -> nn.Module:
    """Network mapping ``(N, in_channels, *S)`` to ``(N, num_outputs)`` logits, randomly initialised.

    2D: any timm model name. 3D: MONAI's ``resnet10/18/34/50`` or ``densenet121``.
    Raises ``ValueError`` for an unknown name, listing close matches.
    """
    if spatial_dims == 2:
        return _timm_classifier(backbone, in_channels, num_outputs, small_input_stem)
    return _monai_classifier(backbone, spatial_dims, in_channels, num_outputs, small_input_stem)


@register_task("classification")
class ClassificationTask(DownstreamTask):
    """Classifier trained with cross-entropy (BCE-with-logits for multi-label), AdamW + cosine.

    Logs ``train/loss``, ``val/loss``, ``val/auc``, ``val/acc``, ``test/loss``, ``test/auc``,
    ``test/acc``. AUROC and accuracy are torchmetrics' "binary" (probability of class 1) when
    ``num_classes == 2``, "multiclass" otherwise, "multilabel" when ``multilabel``; their states
    are gathered across processes, so the values are exact under DDP. ``predict_step`` returns
    probabilities: softmax over classes, or per-label sigmoids when ``multilabel``.

    Args:
        backbone: 2D: a timm model name (``timm.list_models()``); 3D: ``"resnet10"``, ``"resnet18"``,
            ``"resnet34"``, ``"resnet50"`` or ``"densenet121"`` (MONAI). Always randomly initialised.
        spatial_dims: 2 for images (N, C, H, W), 3 for volumes (N, C, D, H, W).
        in_channels: image channels.
        num_classes: classes (at least 2); with ``multilabel``, the number of labels.
        multilabel: labels are multi-hot vectors of length ``num_classes``.
        small_input_stem: for ResNets on tiny inputs (28x28 MedMNIST): a 3x3 stride-1 stem
            without max-pool, as the MedMNIST v2 "ResNet-18 (28)". The body then runs at 4x the
            resolution per axis (16x the pixels in 2D), so a step costs several times more.
        lr, weight_decay: AdamW settings; the learning rate follows a cosine decay over
            ``trainer.estimated_stepping_batches``.
        image_key, label_key: keys of dict batches.
        batch_augmentation: ``"mixup"`` or ``"cutmix"`` to mix every training batch
            (:class:`~.label_mixing.LabelMixing`; the loss is then a cross-entropy with the soft
            targets), ``None`` for none. Not with ``multilabel``; CutMix is 2D only.
        mix_alpha: the Beta(alpha, alpha) parameter of the mixing weight.
    """

    def __init__(self, backbone: str = "resnet18", spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                 multilabel: bool = False, small_input_stem: bool = False, lr: float = 1e-3,
                 weight_decay: float = 1e-4, image_key: str = "image", label_key: str = "label",
                 batch_augmentation: str | None = None, mix_alpha: float = 1.0):
        super().__init__(lr, weight_decay, image_key=image_key, label_key=label_key)
        check_spatial_dims(spatial_dims)
        check_at_least(1, in_channels=in_channels)
        if num_classes < (1 if multilabel else 2):
            raise ValueError(f"num_classes must be at least 2 (at least 1 with multilabel=True), got {num_classes}; "
                             "a binary problem is num_classes=2")
        self.save_hyperparameters()
        self.spatial_dims, self.in_channels, self.num_classes, self.multilabel = (
            spatial_dims, in_channels, num_classes, multilabel)
        self.net = build_classifier(backbone, spatial_dims, in_channels, num_classes, small_input_stem)
        if batch_augmentation is not None and multilabel:
            raise ValueError(f"batch_augmentation={batch_augmentation!r} mixes one class per image; it does not "
                             "apply to multilabel=True")
        self.label_mixing = (None if batch_augmentation is None
                             else LabelMixing(batch_augmentation, num_classes, mix_alpha, spatial_dims))
        # One collection per evaluated stage, so val and test never share state.
        self.metrics = nn.ModuleDict({stage: self._make_metrics() for stage in EVAL_STAGES})

    def _make_metrics(self) -> MetricCollection:
        if self.multilabel:
            kwargs: dict[str, Any] = {"task": "multilabel", "num_labels": self.num_classes}
        elif self.num_classes == 2:
            kwargs = {"task": "binary"}
        else:
            kwargs = {"task": "multiclass", "num_classes": self.num_classes}
        return MetricCollection({"auc": AUROC(**kwargs), "acc": Accuracy(**kwargs)})

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        return self.net(image)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax over classes, or per-label sigmoid when multi-label; float32."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.multilabel else logits.softmax(dim=1)

    def _targets(self, label: Tensor | None, n: int) -> Tensor:
        if label is None:
            raise ValueError("ClassificationTask needs labels: dict batches need a "
                             f"{self.label_key!r} entry, tuple batches an (image, label) pair")
        # unpack_batch flattens labels; multi-hot rows are restored to (N, num_classes).
        return label.reshape(n, -1).float() if self.multilabel else label.reshape(n)

    def shared_step(self, batch: Any, stage: str) -> Tensor:
        image, label, _ = self.unpack(batch)
        n = image.shape[0]
        target = self._targets(label, n)
        soft = None
        if stage == "train" and self.label_mixing is not None:
            image, soft = self.label_mixing(image, target)
        logits = self(image)
        if soft is not None:
            loss = F.cross_entropy(logits.float(), soft)  # cross-entropy with class probabilities
        elif self.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        else:
            loss = F.cross_entropy(logits.float(), target)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, sync_dist=True,
                 batch_size=n, prog_bar=stage == "train")
        if stage in self.metrics:
            probs = self.probabilities(logits.detach())
            scores = probs[:, 1] if (self.num_classes == 2 and not self.multilabel) else probs
            metrics = self.metrics[stage]
            metrics.update(scores, target.long())
            self.log_dict({f"{stage}/{name}": metric for name, metric in metrics.items()}, on_step=False,
                          on_epoch=True, batch_size=n)
        return loss

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities ``(N, num_classes)``."""
        return self.probabilities(self(self.unpack(batch).image))
