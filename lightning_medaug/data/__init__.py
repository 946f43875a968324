"""Real and procedural data modules, all yielding the batch convention of :mod:`.batch`."""

from lightning_medaug.data.batch import (
    IMAGE_KEY,
    LABEL_KEY,
    MASK_KEY,
    Batch,
    unpack_batch,
)
from lightning_medaug.data.folder import FolderDataModule, FolderDataset
from lightning_medaug.data.imageio import Geometry, read_image
from lightning_medaug.data.medmnist import (
    MedMNISTDataModule,
    MedMNISTDataset,
    MedMNISTInfo,
    medmnist_info,
)
from lightning_medaug.data.patch_queue import PatchQueueDataModule
from lightning_medaug.data.phantom import (
    PhantomDataModule,
    PhantomDataset,
    make_phantoms,
)
from lightning_medaug.data.policies import POLICIES, PolicyAugmentation
from lightning_medaug.data.splits import holdout_split, stratified_subset
from lightning_medaug.data.transforms import ClassicAugmentation, classic_augmentation

__all__ = [
    "IMAGE_KEY", "LABEL_KEY", "MASK_KEY", "Batch", "unpack_batch",
    "PhantomDataModule", "PhantomDataset", "make_phantoms",
    "MedMNISTDataModule", "MedMNISTDataset", "MedMNISTInfo", "medmnist_info",
    "FolderDataModule", "FolderDataset", "Geometry", "read_image", "PatchQueueDataModule",
    "ClassicAugmentation", "classic_augmentation", "PolicyAugmentation", "POLICIES",
    "stratified_subset", "holdout_split",
]
