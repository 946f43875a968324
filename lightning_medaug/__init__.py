"""lightning-medaug: generative data augmentation for medical imaging on Lightning.

The names below are the public API. They load on first use, so ``import lightning_medaug``
stays fast (the CLI, the registry and the data modules do not pay for diffusers or MONAI
networks they never touch)::

    from lightning_medaug import MedMNISTDataModule, SyntheticMixDataModule, create_generator
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # registry
    "create_generator": "lightning_medaug.registry",
    "get_generator_class": "lightning_medaug.registry",
    "list_generators": "lightning_medaug.registry",
    "register_generator": "lightning_medaug.registry",
    "register_feature_extractor": "lightning_medaug.registry",
    "register_task": "lightning_medaug.registry",
    # real data
    "MedMNISTDataModule": "lightning_medaug.data",
    "FolderDataModule": "lightning_medaug.data",
    "PhantomDataModule": "lightning_medaug.data",
    "ClassicAugmentation": "lightning_medaug.data",
    "unpack_batch": "lightning_medaug.data",
    # generators
    "GenerativeModule": "lightning_medaug.generative",
    "load_generator": "lightning_medaug.generative",
    "load_pretrained": "lightning_medaug.hub",
    "package_pretrained": "lightning_medaug.hub",
    "FineTuneFrom": "lightning_medaug.finetune",
    "write_model_card": "lightning_medaug.model_card",
    # synthetic bank and mixing
    "SyntheticBank": "lightning_medaug.bank",
    "write_bank": "lightning_medaug.bank",
    "SyntheticMixDataModule": "lightning_medaug.mixing",
    "MixSampler": "lightning_medaug.mixing",
    # downstream tasks
    "ClassificationTask": "lightning_medaug.tasks",
    "SegmentationTask": "lightning_medaug.tasks",
    "DetectionTask": "lightning_medaug.tasks",
    # evidence: fidelity, paired metrics, memorization
    "FrechetDistance": "lightning_medaug.metrics",
    "KernelDistance": "lightning_medaug.metrics",
    "PrecisionRecall": "lightning_medaug.metrics",
    "PairedImageMetrics": "lightning_medaug.metrics",
    "DomainFeatureExtractor": "lightning_medaug.metrics",
    "train_feature_extractor": "lightning_medaug.metrics",
    "train_segmentation_extractor": "lightning_medaug.metrics",
    "load_feature_extractor": "lightning_medaug.metrics",
    "fidelity_with_floor": "lightning_medaug.metrics",
    "memorization_report": "lightning_medaug.metrics",
    "evaluate_bank": "lightning_medaug.evaluation",
    # selection of bank samples
    "KeepRule": "lightning_medaug.selection",
    "score_bank": "lightning_medaug.selection",
    # privacy
    "DifferentialPrivacy": "lightning_medaug.generative.privacy",
    "load_privacy_report": "lightning_medaug.generative.privacy",
    # studies and reports
    "Study": "lightning_medaug.study",
    "save_image_grid": "lightning_medaug.rendering",
}

__all__ = [
    "ClassicAugmentation",
    "ClassificationTask",
    "DetectionTask",
    "DifferentialPrivacy",
    "DomainFeatureExtractor",
    "FineTuneFrom",
    "FolderDataModule",
    "FrechetDistance",
    "GenerativeModule",
    "KeepRule",
    "KernelDistance",
    "MedMNISTDataModule",
    "MixSampler",
    "PairedImageMetrics",
    "PhantomDataModule",
    "PrecisionRecall",
    "SegmentationTask",
    "Study",
    "SyntheticBank",
    "SyntheticMixDataModule",
    "__version__",
    "create_generator",
    "fidelity_with_floor",
    "get_generator_class",
    "list_generators",
    "load_feature_extractor",
    "load_generator",
    "load_privacy_report",
    "evaluate_bank",
    "load_pretrained",
    "memorization_report",
    "package_pretrained",
    "register_feature_extractor",
    "register_generator",
    "register_task",
    "save_image_grid",
    "score_bank",
    "train_feature_extractor",
    "train_segmentation_extractor",
    "unpack_batch",
    "write_bank",
    "write_model_card",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_medaug' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real definitions
    from lightning_medaug.bank import SyntheticBank, write_bank
    from lightning_medaug.data import (
        ClassicAugmentation,
        FolderDataModule,
        MedMNISTDataModule,
        PhantomDataModule,
        unpack_batch,
    )
    from lightning_medaug.evaluation import evaluate_bank
    from lightning_medaug.finetune import FineTuneFrom
    from lightning_medaug.generative import GenerativeModule, load_generator
    from lightning_medaug.generative.privacy import (
        DifferentialPrivacy,
        load_privacy_report,
    )
    from lightning_medaug.hub import load_pretrained, package_pretrained
    from lightning_medaug.metrics import (
        DomainFeatureExtractor,
        FrechetDistance,
        KernelDistance,
        PairedImageMetrics,
        PrecisionRecall,
        fidelity_with_floor,
        load_feature_extractor,
        memorization_report,
        train_feature_extractor,
        train_segmentation_extractor,
    )
    from lightning_medaug.mixing import MixSampler, SyntheticMixDataModule
    from lightning_medaug.model_card import write_model_card
    from lightning_medaug.registry import (
        create_generator,
        get_generator_class,
        list_generators,
        register_feature_extractor,
        register_generator,
        register_task,
    )
    from lightning_medaug.rendering import save_image_grid
    from lightning_medaug.selection import KeepRule, score_bank
    from lightning_medaug.study import Study
    from lightning_medaug.tasks import (
        ClassificationTask,
        DetectionTask,
        SegmentationTask,
    )
