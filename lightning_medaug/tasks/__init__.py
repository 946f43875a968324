"""Downstream tasks: the user's unchanged models, trained on real, synthetic or mixed data.

Registered by name in :data:`lightning_medaug.registry.TASKS`: ``"classification"``,
``"segmentation"``, ``"detection"``.
"""

from lightning_medaug.tasks.base import DownstreamTask
from lightning_medaug.tasks.box_map import BoxMeanAveragePrecision
from lightning_medaug.tasks.boxes import masks_to_boxes
from lightning_medaug.tasks.classification import ClassificationTask
from lightning_medaug.tasks.detection import DetectionTask
from lightning_medaug.tasks.segmentation import SegmentationTask

__all__ = [
    "BoxMeanAveragePrecision",
    "ClassificationTask",
    "DetectionTask",
    "DownstreamTask",
    "SegmentationTask",
    "masks_to_boxes",
]
