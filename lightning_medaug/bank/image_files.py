"""Samples of a bank as image files (NIfTI, MHA, NRRD) next to its shards, with the real data's geometry.

With ``medaug generate --format nifti`` (or ``mha``, ``nrrd``) every sample is also written as::

    BANK/image/<id>.nii.gz    float32, (x, y[, z]) = the array's last, ..., first axis, in [-1, 1]
    BANK/label/<id>.nii.gz    uint8 {0, 1}, for banks with masks

``<id>`` is the sample's id, six digits (``000042``). The values are exactly those
:class:`~lightning_medaug.bank.SyntheticBank` reads (the stored images decoded to float32 in
[-1, 1], not mapped back to the real data's intensities); images with several channels are vector
images. Spacing, origin and direction are the bank's geometry (:mod:`~.geometry`), or unit
spacing at the origin when it has none. The folder is laid out as
:class:`~lightning_medaug.data.FolderDataModule` reads it (``root=BANK``). Each file is written to a
hidden temporary name and renamed, before the shard's manifest marks the shard complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import

from lightning_medaug.bank.encoding import decode_images
from lightning_medaug.bank.manifest import commit
from lightning_medaug.data.imageio import Geometry

sitk, _ = optional_import("SimpleITK")

__all__ = ["FILE_COLUMNS", "FILE_FORMATS", "IMAGE_DIR", "MASK_DIR", "SampleFiles"]

#: ``--format`` names and the file suffix each writes.
FILE_FORMATS = {"nifti": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd"}
IMAGE_DIR, MASK_DIR = "image", "label"
#: Manifest columns of banks written with files: paths relative to the bank folder (empty when absent).
FILE_COLUMNS = ("image_file", "mask_file")


@dataclass(frozen=True)
class SampleFiles:
    """Where and how the samples of one bank are written as image files."""

    file_format: str
    geometry: Geometry
    has_masks: bool = False

    def __post_init__(self) -> None:
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"file format must be one of {', '.join(FILE_FORMATS)}, got {self.file_format!r}")

    def paths(self, sample_id: int) -> dict[str, str | None]:
        """The manifest's :data:`FILE_COLUMNS` of sample ``sample_id`` (POSIX paths relative to the bank)."""
        name = f"{sample_id:06d}{FILE_FORMATS[self.file_format]}"
        return {"image_file": f"{IMAGE_DIR}/{name}", "mask_file": f"{MASK_DIR}/{name}" if self.has_masks else None}

    def write(self, root: Path, ids: range, images: np.ndarray, masks: np.ndarray | None) -> None:
        """Write samples ``ids`` from their stored arrays (N, C, *S) (images in a storage dtype, masks uint8)."""
        (root / IMAGE_DIR).mkdir(exist_ok=True)
        if masks is not None:
            (root / MASK_DIR).mkdir(exist_ok=True)
        for row, sample_id in enumerate(ids):
            paths = self.paths(sample_id)
            self._write_one(root / paths["image_file"], decode_images(np.asarray(images[row])))
            if masks is not None:
                self._write_one(root / paths["mask_file"], np.asarray(masks[row], dtype=np.uint8))

    def _write_one(self, path: Path, array: np.ndarray) -> None:
        image = _to_image(array)
        self.geometry.apply(image)
        tmp = path.with_name("." + path.name)  # hidden, so a folder reader skips a leftover; keeps the suffix
        sitk.WriteImage(image, str(tmp), useCompression=True)
        commit(tmp, path)

    def settings(self) -> dict[str, Any]:
        """What ``bank.json`` records of the files (checked when a bank is resumed)."""
        return {"format": self.file_format, "suffix": FILE_FORMATS[self.file_format], "image_dtype": "float32"}


def _to_image(array: np.ndarray) -> Any:
    """(C, *S) -> a SimpleITK image: scalar for one channel, else a vector image of C components."""
    if array.shape[0] == 1:
        return sitk.GetImageFromArray(array[0])
    return sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
