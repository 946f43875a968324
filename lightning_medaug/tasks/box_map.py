"""COCO-style box mean average precision as a torchmetrics ``Metric``.

torchmetrics' ``MeanAveragePrecision`` needs ``pycocotools`` or ``faster-coco-eval``; this metric
needs neither. It stores detections and ground truth per image (gathered across processes, so
the value is exact under DDP) and scores them with MONAI's port of the COCO evaluation
(``monai.apps.detection.metrics``, from nnDetection; Lin et al. 2014, "Microsoft COCO"):
AP averaged over IoU 0.50:0.05:0.95 and 101 recall points, up to ``max_detections`` per image.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from torch import Tensor
from torchmetrics import Metric

__all__ = ["BoxMeanAveragePrecision"]

_STATES = ("pred_boxes", "pred_scores", "pred_labels", "target_boxes", "target_labels")


class BoxMeanAveragePrecision(Metric):
    """Box mAP over classes ``1..num_classes`` (0 is background), COCO definition.

    ``update(preds, target)`` takes torchvision-style lists of dicts: ``preds`` with ``boxes``
    (xyxy), ``scores``, ``labels``; ``target`` with ``boxes`` and ``labels``. ``compute()``
    returns ``{"map", "map_50", "map_75"}``: the mean over classes that have ground truth, or -1
    when no class has any (COCO's value for "undefined").

    Args:
        num_classes: number of foreground classes.
        max_detections: highest-scoring detections per image that are evaluated.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int = 1, max_detections: int = 100, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        self.num_classes, self.max_detections = num_classes, max_detections
        for name in _STATES:
            # One tensor per image; no reduction, so images keep their own boxes when gathered.
            self.add_state(name, default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"preds and target must list the same images, got {len(preds)} and {len(target)}")
        for pred, truth in zip(preds, target):
            self.pred_boxes.append(pred["boxes"].detach().float().reshape(-1, 4))
            self.pred_scores.append(pred["scores"].detach().float().reshape(-1))
            self.pred_labels.append(pred["labels"].detach().long().reshape(-1))
            self.target_boxes.append(truth["boxes"].detach().float().reshape(-1, 4))
            self.target_labels.append(truth["labels"].detach().long().reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        coco = COCOMetric(classes=[str(c) for c in range(1, self.num_classes + 1)], iou_list=(0.5, 0.75),
                          iou_range=(0.5, 0.95, 0.05), max_detection=(1, 10, self.max_detections),
                          per_class=True, verbose=False)

        def arrays(states: list[Tensor], shift: int = 0) -> list[np.ndarray]:
            return [t.cpu().numpy() - shift for t in states]

        matches = matching_batch(
            iou_fn=box_iou, iou_thresholds=coco.iou_thresholds, pred_boxes=arrays(self.pred_boxes),
            pred_classes=arrays(self.pred_labels, 1), pred_scores=arrays(self.pred_scores),
            gt_boxes=arrays(self.target_boxes), gt_classes=arrays(self.target_labels, 1),
            max_detections=self.max_detections)
        values, _ = coco(matches)
        last = self.max_detections
        keys = {"map": f"mAP_IoU_0.50_0.95_0.05_MaxDet_{last}", "map_50": f"AP_IoU_0.50_MaxDet_{last}",
                "map_75": f"AP_IoU_0.75_MaxDet_{last}"}
        out = {}
        for name, key in keys.items():
            # Classes without ground truth are -1 in COCO's tables; leave them out of the mean.
            per_class = [values[f"{c}_{key}"] for c in coco.classes if values[f"{c}_{key}"] >= 0]
            out[name] = torch.tensor(float(np.mean(per_class)) if per_class else -1.0, device=self.device)
        return out
