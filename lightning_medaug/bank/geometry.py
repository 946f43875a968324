"""The physical geometry a bank records: spacing, origin and direction of the real data it imitates.

A bank's samples have no place in space of their own; ``medaug generate --geometry-from`` gives
them the placement of the real images (one image file, or the data module of a recipe), kept in
``bank.json`` and written into every sample file. Spacing, origin and direction follow SimpleITK's
(x, y[, z]) order, the reverse of the array axes: a (D, H, W) volume with voxels of 2.5 mm along D
and 0.8 mm along H and W has ``spacing = (0.8, 0.8, 2.5)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_medaug.bank.data_config import load_data_module
from lightning_medaug.data.imageio import IMAGE_SUFFIXES, Geometry, read_image

__all__ = ["GeometryLike", "bank_geometry", "geometry_from"]

#: A geometry: a :class:`Geometry`, or ``bank.json``'s mapping of ``spacing`` / ``origin`` / ``direction``.
GeometryLike = Geometry | Mapping[str, Sequence[float]]


def geometry_from(source: str | Path | Mapping[str, Any]) -> Geometry:
    """The geometry of an image file (any SimpleITK format, or a DICOM series folder), or the
    ``image_geometry`` of the data module of a recipe / data config (YAML file or dict)."""
    if isinstance(source, Mapping) or str(source).lower().endswith((".yaml", ".yml")):
        datamodule, section = load_data_module(source)
        if not hasattr(type(datamodule), "image_geometry"):
            raise ValueError(f"{section['class_path']} does not describe its images' geometry (no image_geometry); "
                             "pass one of its image files to --geometry-from instead")
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule.image_geometry
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"geometry source {path} not found: pass an image file, a DICOM series folder or a "
                                "recipe (.yaml)")
    if not (path.is_dir() or path.name.lower().endswith(IMAGE_SUFFIXES)):
        raise ValueError(f"cannot take a geometry from {path}: pass an image file ({', '.join(IMAGE_SUFFIXES)}), a "
                         "DICOM series folder or a recipe (.yaml)")
    return Geometry.of(read_image(path))


def bank_geometry(geometry: GeometryLike | None, size: Sequence[int]) -> Geometry | None:
    """``geometry`` on the bank's grid ``size`` (numpy order).

    A :class:`Geometry` of another shape (real images at their native size, a generator trained
    on resized ones) keeps its field of view (:meth:`Geometry.resized`); a mapping
    (``bank.json``'s ``spacing`` / ``origin`` / ``direction``) is taken as given.
    """
    if geometry is None:
        return None
    if isinstance(geometry, Geometry):
        return geometry.resized(size)
    if isinstance(geometry, Mapping):
        return Geometry.from_dict(size, geometry)
    raise ValueError(f"geometry must be a Geometry or a mapping with spacing, origin and direction, "
                     f"got {type(geometry).__name__}")
