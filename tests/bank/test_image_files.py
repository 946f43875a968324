"""Banks with a geometry and image files: NIfTI/MHA/NRRD samples read back by SimpleITK with the
same array, spacing, origin and direction; --geometry-from an image file; wrong arguments."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.cli import main as cli_main
from lightning_medaug.data import FolderDataModule, PhantomDataModule
from lightning_medaug.data.imageio import Geometry
from lightning_medaug.generative.diffusion import DDPM
from lightning_medaug.registry import create_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE_3D, SPACING_3D = (8, 12, 16), (2.5, 0.8, 0.8)  # (D, H, W) and the voxel size along each of them
# 90 degrees about z and an origin away from zero: a transposed axis or a dropped origin shows
TILTED = Geometry(SIZE_3D, (0.8, 0.8, 2.5), (10.0, -5.0, 3.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def _cvae(spatial_dims: int, size: tuple[int, ...]):
    torch.manual_seed(0)
    return create_generator("cvae", spatial_dims=spatial_dims, image_size=size, num_classes=2, channels=(8, 8),
                            norm_num_groups=4, latent_channels=2)


def _rows(root) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_phantom_spacing_round_trips_through_nifti_in_array_axis_order(tmp_path):
    geometry = PhantomDataModule(spatial_dims=3, image_size=SIZE_3D, spacing=SPACING_3D).image_geometry
    root = tmp_path / "bank"
    write_bank(_cvae(3, SIZE_3D), root, 6, shard_size=4, dtype="float16", progress=False, geometry=geometry,
               file_format="nifti")
    bank = SyntheticBank(root)
    assert bank.geometry == geometry and bank.file_format == "nifti"
    rows = _rows(root)
    assert [r["image_file"] for r in rows] == [f"image/{i:06d}.nii.gz" for i in range(6)]
    assert {r["mask_file"] for r in rows} == {""}
    for i, row in enumerate(rows):
        image = sitk.ReadImage(str(root / row["image_file"]))
        array = sitk.GetArrayFromImage(image)
        assert array.shape == SIZE_3D and array.dtype == np.float32
        np.testing.assert_array_equal(array, bank[i]["image"][0].numpy())  # what the bank reads, bit for bit
        # SimpleITK lists spacing (x, y, z) = (W, H, D): the thick 2.5 mm slices are the first array axis
        assert image.GetSpacing() == pytest.approx(SPACING_3D[::-1])
        first, next_slice = (image.TransformIndexToPhysicalPoint(i) for i in ((0, 0, 0), (0, 0, 1)))
        step = np.subtract(next_slice, first)
        assert np.linalg.norm(step) == pytest.approx(2.5)
    assert not list((root / "image").glob(".*")), "temporary files left behind"


@pytest.mark.parametrize("file_format, suffix, dtype", [("mha", ".mha", "uint8"), ("nrrd", ".nrrd", "float32")])
def test_tilted_geometry_round_trips_in_mha_and_nrrd(tmp_path, file_format, suffix, dtype):
    root = tmp_path / "bank"
    write_bank(_cvae(3, SIZE_3D), root, 3, progress=False, dtype=dtype, geometry=TILTED, file_format=file_format)
    bank = SyntheticBank(root)
    image = sitk.ReadImage(str(root / "image" / f"000002{suffix}"))
    assert Geometry.of(image).matches(TILTED, atol=1e-6) and bank.geometry.matches(TILTED, atol=1e-9)
    # within the storage dtype's precision: uint8 keeps [-1, 1] to 1/127.5
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), bank[2]["image"][0].numpy(), atol=1e-6)


def test_2d_masks_are_written_next_to_images_as_a_folder_the_data_module_reads(tmp_path):
    torch.manual_seed(0)
    model = create_generator("pix2pix", image_size=(24, 20), generator_channels=4, discriminator_channels=4,
                             generator_levels=3)
    masks = np.zeros((2, 1, 24, 20), dtype=np.uint8)
    masks[0, 0, 4:12, 3:9] = 1
    masks[1, 0, 10:20, 8:18] = 1
    geometry = Geometry((24, 20), (0.5, 0.7), (1.0, 2.0), (1.0, 0.0, 0.0, 1.0))
    root = tmp_path / "bank"
    write_bank(model, root, 3, masks=masks, progress=False, geometry=geometry, file_format="nifti")
    rows = _rows(root)
    assert rows[2]["mask_file"] == "label/000002.nii.gz"
    mask = sitk.ReadImage(str(root / rows[2]["mask_file"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), masks[0, 0])  # masks cycle by sample id
    assert Geometry.of(mask).matches(geometry)
    data = FolderDataModule(root=str(root), val_fraction=0.0, test_fraction=0.0)
    data.setup()
    assert data.tensors["image"].shape == (3, 1, 24, 20) and data.image_geometry.matches(geometry)


def test_a_geometry_of_another_size_keeps_its_field_of_view(tmp_path, capsys):
    model_dir = _cvae(3, SIZE_3D).save_pretrained(tmp_path / "model")
    reference = sitk.GetImageFromArray(np.zeros((16, 48, 64), dtype=np.int16))  # native grid, twice and 4x finer
    TILTED.apply(reference).SetSpacing((0.2, 0.2, 1.25))
    sitk.WriteImage(reference, str(tmp_path / "ct.nii.gz"))
    root = tmp_path / "bank"
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", "2", "--format", "mha",
                     "--geometry-from", str(tmp_path / "ct.nii.gz"), "--out", str(root), "--no-progress"]) == 0
    image = sitk.ReadImage(str(root / "image" / "000001.mha"))
    assert image.GetSize() == (16, 12, 8) and image.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
    assert SyntheticBank(root).geometry.spacing == pytest.approx((0.8, 0.8, 2.5))
    # the same physical extent, the same centre
    extent = np.asarray(image.GetSize()) * image.GetSpacing()
    assert extent == pytest.approx(np.asarray(reference.GetSize()) * reference.GetSpacing())
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    assert centre == pytest.approx(reference.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2 for s in reference.GetSize()]))

    capsys.readouterr()
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", "2", "--format", "nifti",
                     "--geometry-from", str(tmp_path / "ct.nii.gz"), "--out", str(root), "--no-progress"]) == 2
    assert "files" in capsys.readouterr().err  # resuming with another format is refused
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", "2", "--geometry-from",
                     str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "b2")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("spacing 1")
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", "2", "--geometry-from",
                     str(tmp_path / "notes.txt"), "--out", str(tmp_path / "b3")]) == 2
    assert "cannot take a geometry" in capsys.readouterr().err
    assert cli_main(["generate", "--model", str(model_dir), "--num-samples", "2", "--format", "png",
                     "--out", str(tmp_path / "b4")]) == 2


def test_a_2d_geometry_is_refused_for_3d_samples(tmp_path):
    with pytest.raises(ValueError, match="2D geometry cannot describe 3D"):
        write_bank(_cvae(3, SIZE_3D), tmp_path / "bank", 1, geometry=Geometry.grid((24, 20)), progress=False)
    assert not (tmp_path / "bank").exists()


def test_edits_of_real_images_are_written_as_files_with_the_real_geometry(tmp_path):
    torch.manual_seed(0)
    model_dir = DDPM(image_size=(8, 12), num_classes=2, channels=(8, 16), norm_num_groups=8,
                     num_inference_steps=2).save_pretrained(tmp_path / "ddpm")
    data = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": [8, 12], "spacing": [0.5, 0.7], "num_classes": 2, "num_train": 3,
                          "num_val": 1, "num_test": 1, "with_masks": False}}
    recipe = tmp_path / "data.yaml"
    recipe.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    root = tmp_path / "edits"
    assert cli_main(["generate", "--model", str(model_dir), "--edit-from", str(recipe), "--strength", "0.5",
                     "--format", "mha", "--geometry-from", str(recipe), "--out", str(root), "--no-progress"]) == 0
    rows = _rows(root)
    assert [r["parent_index"] for r in rows] == ["0", "1", "2"] and rows[1]["image_file"] == "image/000001.mha"
    image = sitk.ReadImage(str(root / rows[1]["image_file"]))
    assert sitk.GetArrayFromImage(image).shape == (8, 12) and image.GetSpacing() == pytest.approx((0.7, 0.5))
