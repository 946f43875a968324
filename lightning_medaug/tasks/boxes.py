"""Detection targets from segmentation masks: one box per connected component."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["masks_to_boxes"]


def _component_boxes(binary: np.ndarray) -> np.ndarray:
    """``(K, 4)`` xyxy boxes of the 4-connected components of a 2D boolean array."""
    components, _ = ndimage.label(binary)
    # find_objects gives half-open slices, so a one-pixel component is a 1x1 box, never degenerate.
    slices = [s for s in ndimage.find_objects(components) if s is not None]
    return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.float32).reshape(-1, 4)


def masks_to_boxes(masks: Tensor, num_classes: int = 1) -> list[dict[str, Tensor]]:
    """Detection targets ``[{"boxes": (K, 4) float32 xyxy, "labels": (K,) int64}, ...]``, one per image.

    Each connected component of class ``c`` becomes one box labelled ``c``. Boxes are in pixel-edge
    coordinates: a component covering columns ``x0..x1`` (inclusive) spans ``x0`` to ``x1 + 1``.
    Images with empty masks get zero boxes.

    Args:
        masks: ``(N, 1, H, W)`` or ``(N, H, W)``; binary masks in {0, 1} when ``num_classes == 1``,
            otherwise class indices ``0..num_classes`` with 0 as background.
        num_classes: number of foreground classes.
    """
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must have one channel, got shape {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, 1, H, W) or (N, H, W), got shape {tuple(masks.shape)}")
    values = masks.detach().float().cpu().numpy()
    targets = []
    for image_mask in values:
        boxes, labels = [], []
        for c in range(1, num_classes + 1):
            # Binary masks may be soft (e.g. resampled); class-index masks are rounded.
            region = image_mask > 0.5 if num_classes == 1 else np.rint(image_mask) == c
            found = _component_boxes(region)
            boxes.append(found)
            labels.append(np.full(len(found), c, dtype=np.int64))
        targets.append({"boxes": torch.from_numpy(np.concatenate(boxes)).to(masks.device),
                        "labels": torch.from_numpy(np.concatenate(labels)).to(masks.device)})
    return targets
