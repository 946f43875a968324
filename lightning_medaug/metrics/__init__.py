"""Evaluation metrics: distribution fidelity, paired image quality and memorization.

Fidelity metrics (Frechet distance, KID, precision/recall/density/coverage) are torchmetrics
``Metric``s on features of any ``nn.Module``; the default extractor is a classifier this library
trains on the real training split (:func:`train_feature_extractor`, registered as ``"domain"``
in :data:`lightning_medaug.registry.FEATURE_EXTRACTORS`); for data with masks and no labels, the
encoder of a segmenter trained on it (:func:`train_segmentation_extractor`, ``"segmentation"``).
"""

from lightning_medaug.metrics.features import (
    DomainFeatureExtractor,
    collect_images,
    dataset_fingerprint,
    extract_features,
    load_feature_extractor,
    save_feature_extractor,
    train_feature_extractor,
)
from lightning_medaug.metrics.fidelity import (
    FrechetDistance,
    KernelDistance,
    PrecisionRecall,
    fidelity_table,
    fidelity_with_floor,
    frechet_distance,
    kernel_distance,
    precision_recall,
)
from lightning_medaug.metrics.memorization import (
    NearestTrain,
    memorization_report,
    nearest_neighbours,
    save_closest_pairs,
)
from lightning_medaug.metrics.paired import (
    PairedImageMetrics,
    ms_ssim_min_size,
    paired_image_metrics,
)
from lightning_medaug.metrics.segmentation_features import SegmentationFeatureExtractor, train_segmentation_extractor

__all__ = [
    "DomainFeatureExtractor",
    "FrechetDistance",
    "KernelDistance",
    "PairedImageMetrics",
    "PrecisionRecall",
    "SegmentationFeatureExtractor",
    "collect_images",
    "dataset_fingerprint",
    "extract_features",
    "fidelity_table",
    "fidelity_with_floor",
    "frechet_distance",
    "kernel_distance",
    "load_feature_extractor",
    "NearestTrain",
    "memorization_report",
    "ms_ssim_min_size",
    "nearest_neighbours",
    "paired_image_metrics",
    "precision_recall",
    "save_closest_pairs",
    "save_feature_extractor",
    "train_feature_extractor",
    "train_segmentation_extractor",
]
