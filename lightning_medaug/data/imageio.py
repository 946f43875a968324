"""Reading medical images with SimpleITK: files and DICOM series to arrays, with their geometry.

Only geometry (spacing, origin, direction) is kept: DICOM tags such as patient name or UIDs are
never read into anything this module returns.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from monai.utils import optional_import
from torch import Tensor

# Optional at import: only file I/O needs SimpleITK; without it the generators and mixing still work and
# reading or writing a file raises an error that names the missing package.
sitk, _ = optional_import("SimpleITK")

__all__ = ["IMAGE_SUFFIXES", "Geometry", "read_image", "scan_folder", "image_to_array", "rescale_intensity", "resize"]

#: File suffixes read as one image each; sub-folders are read as DICOM series.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                  ".bmp", ".dcm")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of an image in SimpleITK (x, y[, z]) order; ``shape`` is numpy (z, y, x) order."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(reversed(image.GetSize())), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def grid(cls, shape: Sequence[int], spacing: Sequence[float] | None = None) -> Geometry:
        """A grid at the origin with identity direction; ``spacing`` in (x, y[, z]) order, default 1."""
        dims = len(shape)
        spacing = (1.0,) * dims if spacing is None else tuple(float(s) for s in spacing)
        return cls(tuple(int(s) for s in shape), spacing, (0.0,) * dims,
                   tuple(float(i == j) for i in range(dims) for j in range(dims)))

    def resized(self, shape: Sequence[int]) -> Geometry:
        """The same field of view on a grid of ``shape`` (numpy order), as :func:`resize` samples it.

        Spacing scales by old / new size per axis and the origin moves to the centre of the new
        first voxel (``align_corners=False``). A one-slice volume (1, H, W) may become 2D (H, W).
        """
        shape = tuple(int(s) for s in shape)
        geometry = self
        if len(shape) == len(self.shape) - 1 == 2 and self.shape[0] == 1:  # a one-slice volume read as 2D
            geometry = Geometry(self.shape[1:], self.spacing[:2], self.origin[:2],
                                tuple(np.asarray(self.direction).reshape(3, 3)[:2, :2].ravel().tolist()))
        if len(shape) != len(geometry.shape):
            raise ValueError(f"a {len(geometry.shape)}D geometry cannot describe {len(shape)}D images of shape "
                             f"{shape}; take the geometry from images of the same kind")
        if shape == geometry.shape:
            return geometry
        dims = len(shape)
        spacing = np.asarray(geometry.spacing) * np.asarray(geometry.shape[::-1]) / np.asarray(shape[::-1])
        direction = np.asarray(geometry.direction, dtype=np.float64).reshape(dims, dims)
        origin = np.asarray(geometry.origin) + direction @ ((spacing - np.asarray(geometry.spacing)) / 2)
        return Geometry(shape, tuple(spacing.tolist()), tuple(origin.tolist()), geometry.direction)

    def to_dict(self) -> dict[str, list[float]]:
        """``{"spacing", "origin", "direction"}`` as JSON lists ((x, y[, z]) order; the shape is not kept)."""
        return {"spacing": list(map(float, self.spacing)), "origin": list(map(float, self.origin)),
                "direction": list(map(float, self.direction))}

    @classmethod
    def from_dict(cls, shape: Sequence[int], record: dict[str, Sequence[float]]) -> Geometry:
        """The inverse of :meth:`to_dict` for images of ``shape`` (numpy order); ``ValueError`` when
        the lengths do not fit ``len(shape)`` axes or a spacing is not positive."""
        dims = len(shape)
        try:
            spacing, origin, direction = (tuple(float(v) for v in record[k]) for k in ("spacing", "origin",
                                                                                      "direction"))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a geometry needs spacing, origin and direction as lists of numbers, got {record!r}") \
                from None
        if len(spacing) != dims or len(origin) != dims or len(direction) != dims * dims or min(spacing) <= 0:
            raise ValueError(f"a geometry of {dims}D images needs {dims} positive spacings, {dims} origin values and "
                             f"{dims * dims} direction values, got {record!r}")
        return cls(tuple(int(s) for s in shape), spacing, origin, direction)

    def matches(self, other: Geometry, atol: float = 1e-3) -> bool:
        """Same grid up to ``atol`` (in the image's units, usually mm) for spacing and origin."""
        return (self.shape == other.shape and np.allclose(self.spacing, other.spacing, atol=atol)
                and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=1e-4))


def read_image(path: str | Path) -> sitk.Image:
    """Read one image file, or a folder holding exactly one DICOM series, with SimpleITK."""
    path = Path(path)
    try:
        if not path.is_dir():
            image = sitk.ReadImage(str(path))
            if path.name.lower().endswith((".nii", ".nii.gz")):
                _check_nifti(path)
            return image
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if len(series) != 1:
            raise ValueError(f"folder {path} must hold exactly one DICOM series, found {len(series)}; give each "
                             "series its own folder")
        reader = sitk.ImageSeriesReader()  # metadata dictionaries stay off: no tags are read
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    except RuntimeError as err:  # SimpleITK reports unreadable files as RuntimeError
        reason = str(err).strip().splitlines()[-1]
        raise ValueError(f"cannot read {path}: {reason}; replace or remove the file") from None


def _check_nifti(path: Path) -> None:
    """Raise ``ValueError`` when a NIfTI-1 file is truncated or holds NaN/Inf float voxels.

    ITK pads a truncated .nii or .nii.gz with zeros and reads NaN and Inf as 0, without a word. The
    file is read to its end (for .gz this checks the CRC too) and compared with its header.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"cannot read {path}: truncated or corrupt ({err}); copy the file again") from None
    order = "<" if data[:4] == struct.pack("<i", 348) else ">"
    if len(data) < 348 or data[:4] != struct.pack(f"{order}i", 348):
        return  # not NIfTI-1 (e.g. NIfTI-2): ITK's own checks apply
    dims = struct.unpack(f"{order}8h", data[40:56])
    datatype, bitpix = struct.unpack(f"{order}2h", data[70:74])
    offset = int(struct.unpack(f"{order}f", data[108:112])[0])
    voxels = int(np.prod([max(d, 1) for d in dims[1:1 + max(0, min(dims[0], 7))]]))
    end = offset + voxels * bitpix // 8
    if len(data) < end:
        raise ValueError(f"cannot read {path}: truncated, it holds {len(data)} of the {end} bytes its header "
                         "announces; copy the file again")
    floats = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}  # float32, float64, complex64, complex128
    if datatype in floats and not np.isfinite(np.frombuffer(data, order + floats[datatype], offset=offset,
                                                            count=(end - offset) // int(floats[datatype][1]))).all():
        raise ValueError(f"{path} holds NaN or infinite values; replace them (e.g. with the background value) "
                         "or remove the file")


def _stem(path: Path) -> str | None:
    """Pairing key of a directory entry, ``None`` for entries that are not images."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        return path.name
    lower = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _natural_key(text: str) -> list:
    # "2" before "10", so hold-out indices follow the numbering people see.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def scan_folder(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        stem = _stem(entry)
        if stem is None:
            continue
        if stem in found:
            raise ValueError(f"two files share the stem {stem!r}: {found[stem]} and {entry}; keep one")
        found[stem] = entry
    return dict(sorted(found.items(), key=lambda kv: _natural_key(kv[0])))


def image_to_array(image: sitk.Image, path: Path, spatial_dims: int | None) -> np.ndarray:
    """(C, *S) float32 array; a one-slice volume counts as 2D unless ``spatial_dims == 3``."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    channels = image.GetNumberOfComponentsPerPixel()
    arr = arr[..., None] if channels == 1 else arr
    arr = np.moveaxis(arr, -1, 0)
    if arr.ndim == 4 and arr.shape[1] == 1 and spatial_dims != 3:
        arr = arr[:, 0]
    if spatial_dims is not None and arr.ndim - 1 != spatial_dims:
        raise ValueError(f"{path} has spatial shape {arr.shape[1:]}, expected {spatial_dims}D "
                         "(set by spatial_dims or by the first image)")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path} holds NaN or infinite values; replace them (e.g. with the background value) "
                         "or remove the file")
    return arr


def rescale_intensity(arr: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the given intensity percentiles and map to [-1, 1]; a constant image becomes -1."""
    lo, hi = np.percentile(arr, percentiles)
    if hi <= lo:
        return np.full_like(arr, -1.0)
    return ((np.clip(arr, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def resize(x: Tensor, size: int | Sequence[int] | None, is_mask: bool) -> Tensor:
    """Resize ``x`` (C, *S) to ``size`` (one side or one per axis); masks nearest, images (bi/tri)linear."""
    if size is None:
        return x
    sd = x.ndim - 1
    size = (size,) * sd if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != sd:
        raise ValueError(f"image_size={list(size)} gives {len(size)} sizes but the images have {sd} axes: "
                         f"give one side or {sd} sizes")
    if is_mask:
        return F.interpolate(x[None], size=size, mode="nearest-exact")[0]
    mode = "bilinear" if sd == 2 else "trilinear"
    # Anti-aliasing matters when shrinking 512x512 EM to 128; torch offers it for 2D only.
    out = F.interpolate(x[None], size=size, mode=mode, align_corners=False, antialias=sd == 2)
    return out[0].clamp(-1.0, 1.0)
