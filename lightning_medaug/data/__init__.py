"""Real and procedural data modules, all yielding the batch convention of :mod:`.batch`."""

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY, Batch, unpack_batch
from lightning_medaug.data.phantom import PhantomDataModule, PhantomDataset, make_phantoms

__all__ = ["IMAGE_KEY", "LABEL_KEY", "MASK_KEY", "Batch", "unpack_batch", "PhantomDataModule", "PhantomDataset", "make_phantoms"]
