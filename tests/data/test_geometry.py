"""The reference geometry of real data (FolderDataModule.image_geometry) and Geometry.resized."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lightning_medaug.data import FolderDataModule
from lightning_medaug.data.imageio import Geometry

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _volume(path: Path, shape, spacing, origin=(10.0, -5.0, 3.0)) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_image_geometry_is_the_first_training_image_on_the_served_grid(tmp_path):
    for i in range(3):  # (D, H, W) = (8, 12, 16), thick slices along D
        _volume(tmp_path / "image" / f"case{i}.nii.gz", (8, 12, 16), (0.8, 0.8, 2.5), origin=(10.0 + i, -5.0, 3.0))
    data = FolderDataModule(root=str(tmp_path), mask_dir=None, val_indices=[0], test_indices=[])
    with pytest.raises(ValueError, match="setup"):
        data.image_geometry  # noqa: B018
    data.setup()
    geometry = data.image_geometry
    assert geometry.shape == (8, 12, 16) and geometry.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert geometry.origin == pytest.approx((11.0, -5.0, 3.0)) and geometry.direction == pytest.approx(DIRECTION)

    resized = FolderDataModule(root=str(tmp_path), mask_dir=None, image_size=8, val_indices=[0], test_indices=[])
    resized.setup()
    assert resized.image_geometry.shape == (8, 8, 8)
    assert resized.image_geometry.spacing == pytest.approx((1.6, 1.2, 2.5))  # the same millimetres, fewer voxels


def test_image_geometry_warns_when_training_images_differ_in_spacing(tmp_path):
    _volume(tmp_path / "image" / "a.nii.gz", (8, 12, 16), (0.8, 0.8, 2.5))
    _volume(tmp_path / "image" / "b.nii.gz", (8, 12, 16), (0.8, 0.8, 5.0))
    data = FolderDataModule(root=str(tmp_path), mask_dir=None, val_indices=[], test_indices=[])
    data.setup()
    with pytest.warns(UserWarning, match="differ from a in spacing"):
        assert data.image_geometry.spacing == pytest.approx((0.8, 0.8, 2.5))


def test_resized_keeps_extent_and_centre_under_any_direction():
    geometry = Geometry((8, 12, 16), (0.8, 0.8, 2.5), (10.0, -5.0, 3.0), DIRECTION)
    half = geometry.resized((4, 6, 32))
    assert half.spacing == pytest.approx((0.4, 1.6, 5.0))

    def centre(g: Geometry) -> np.ndarray:
        index = (np.asarray(g.shape[::-1]) - 1) / 2
        return np.asarray(g.origin) + np.reshape(g.direction, (3, 3)) @ (index * g.spacing)

    np.testing.assert_allclose(centre(half), centre(geometry))
    assert geometry.resized((8, 12, 16)) is geometry
    planar = Geometry((1, 12, 16), (0.8, 0.7, 2.5), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()))
    assert planar.resized((12, 16)) == Geometry((12, 16), (0.8, 0.7), (1.0, 2.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3D geometry cannot describe 2D"):
        geometry.resized((12, 16))
