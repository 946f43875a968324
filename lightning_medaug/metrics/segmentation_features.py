"""A domain feature extractor for data sets with masks and no class labels (EM, organ, lesion masks).

The ``"domain"`` extractor (:mod:`.features`) is a classifier of the training labels; segmentation data
sets have masks instead. This one trains the library's own :class:`~lightning_medaug.tasks.SegmentationTask`
on the real training split and reads the features off its encoder: every resolution level's activations,
averaged over space and concatenated (low levels carry texture, deep ones context), so two image sets
differ in these features where they differ in what a segmenter of this data looks at. Registered as
``"segmentation"``: ``medaug evaluate --extractor segmentation``. Cached as the classifier is, keyed by a
SHA-256 of the training images *and masks* and of the settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_medaug.metrics.features import (
    _required,
    _train_dataset,
    cache_entry,
    dataset_fingerprint,
    fit_and_cache,
    is_cached,
)
from lightning_medaug.registry import register_feature_extractor
from lightning_medaug.weights_folder import CONFIG_NAME, WEIGHTS_NAME, write_weights_folder

__all__ = ["SegmentationFeatureExtractor", "train_segmentation_extractor"]

#: ``config.json["feature_extractor"]`` of a saved segmentation extractor.
KIND = "segmentation"


def _levels(net: nn.Module) -> list[nn.Module]:
    """The encoder's resolution levels of a segmenter ``build_segmenter`` made: smp's ``encoder`` (2D) returns
    them itself; MONAI's 3D ``UNet`` nests ``Sequential(down, SkipConnection(deeper), up)``, so its levels
    are the ``down`` blocks, read by hooks."""
    from monai.networks.layers import SkipConnection

    levels, block = [], getattr(net, "model", None)
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        levels.append(block[0])
        block = block[1].submodule
    if block is None or not levels:
        raise ValueError(f"{type(net).__name__} is neither an smp model nor a MONAI UNet: its encoder levels "
                         "cannot be found")
    return [*levels, block]  # the bottom block: the deepest level


class SegmentationFeatureExtractor(nn.Module):
    """Spatially averaged encoder activations ``(N, D)`` float32 of a trained segmenter, frozen, in eval mode.

    Args:
        net: a network made by :func:`~lightning_medaug.tasks.segmentation.build_segmenter` (an smp model
            in 2D, a MONAI ``UNet`` in 3D); it is used, not copied.
        spatial_dims, in_channels: what the images must have, checked on every call.
    """

    def __init__(self, net: nn.Module, spatial_dims: int, in_channels: int):
        super().__init__()
        self.net, self.spatial_dims, self.in_channels = net, spatial_dims, in_channels
        self.smp = hasattr(net, "encoder")
        self._levels = None if self.smp else _levels(net)
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():  # the width, from a probe at the smallest size every level accepts
            probe = torch.zeros(1, in_channels, *([32] * spatial_dims))
            self.num_features = int(self._pooled(probe).shape[1])
        self.config: dict[str, Any] = {}
        self.path: Path | None = None
        self.from_cache = False

    def train(self, mode: bool = True) -> SegmentationFeatureExtractor:
        return super().train(False)  # frozen: batch-norm statistics stay those of the trained segmenter

    def _pooled(self, images: Tensor) -> Tensor:
        if self.smp:
            maps = [m for m in self.net.encoder(images) if m.shape[1] > 0][1:]  # level 0 is the image itself
        else:
            maps = []
            hooks = [level.register_forward_hook(lambda _m, _i, out: maps.append(out)) for level in self._levels]
            try:
                self.net(images)
            finally:
                for hook in hooks:
                    hook.remove()
        return torch.cat([m.float().flatten(2).mean(-1) for m in maps], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != self.spatial_dims + 2 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images (N, {self.in_channels}, *S) with {self.spatial_dims} spatial axes, "
                             f"got shape {tuple(images.shape)}")
        return self._pooled(images)


def load_segmentation_extractor(folder: str | Path, config: dict[str, Any],
                                map_location: str | torch.device = "cpu") -> SegmentationFeatureExtractor:
    """Rebuild an extractor from ``folder`` (its ``config.json`` already read as ``config``)."""
    from safetensors.torch import load_file

    from lightning_medaug.tasks.segmentation import SegmentationTask

    task = SegmentationTask(**config["task_init_args"])
    task.net.load_state_dict(load_file(str(Path(folder) / WEIGHTS_NAME), device=str(map_location)))
    extractor = SegmentationFeatureExtractor(task.net, task.spatial_dims, task.in_channels).to(map_location)
    extractor.config, extractor.path = config, Path(folder)
    return extractor


@register_feature_extractor(KIND)
def train_segmentation_extractor(datamodule: L.LightningDataModule, cache_dir: str | Path,
                                 backbone: str = "resnet18", epochs: int = 5, max_steps: int = -1, seed: int = 0,
                                 lr: float = 1e-3, retrain: bool = False,
                                 trainer_kwargs: Mapping[str, Any] | None = None,
                                 **_: Any) -> SegmentationFeatureExtractor:
    """Train (or load from cache) a U-Net on ``datamodule``'s image and mask pairs; return its encoder features.

    ``backbone`` is the smp encoder in 2D (a MONAI UNet in 3D); ``epochs``, ``max_steps``, ``seed``, ``lr``
    and ``retrain`` as for the ``"domain"`` extractor. Binary masks (``num_classes`` 1 or 2) train one
    foreground channel. Other options of the classifier (``small_input_stem``...) do not apply and are ignored.
    """
    from lightning_medaug.tasks.segmentation import SegmentationTask

    if epochs < 1 and max_steps < 1:
        raise ValueError(f"give epochs >= 1 or max_steps >= 1 (got epochs={epochs}, max_steps={max_steps})")
    data_hash = dataset_fingerprint(_train_dataset(datamodule), with_masks=True)
    classes = getattr(datamodule, "num_classes", None) or 2
    task_args = {"encoder": backbone, "spatial_dims": _required(datamodule, "spatial_dims"),
                 "in_channels": _required(datamodule, "in_channels"), "num_classes": 1 if classes <= 2 else classes,
                 "lr": lr}
    settings = {**task_args, "epochs": epochs, "max_steps": max_steps, "seed": seed}
    folder = cache_entry(cache_dir, data_hash, f"{KIND}-{backbone.replace('/', '_')}", settings)
    if not retrain and is_cached(folder):
        extractor = load_segmentation_extractor(folder, json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
        extractor.from_cache = True
        return extractor
    L.seed_everything(seed, workers=True, verbose=False)
    task = SegmentationTask(**task_args)
    from lightning_medaug import __version__

    def write(staging: Path, global_step: int, val_metrics: dict[str, float]) -> None:
        config = {"feature_extractor": KIND, "task_init_args": dict(task_args), "library_version": __version__,
                  "data_hash": data_hash, "training": settings, "global_step": global_step,
                  "val_metrics": val_metrics}
        write_weights_folder(staging, config, task.net.state_dict(), metadata={"feature_extractor": KIND})

    fit_and_cache(task, datamodule, folder, write, epochs, max_steps, trainer_kwargs)
    extractor = SegmentationFeatureExtractor(task.net.cpu(), task.spatial_dims, task.in_channels)
    extractor.config, extractor.path = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")), folder
    return extractor
