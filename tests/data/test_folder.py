"""FolderDataModule: shipped ISBI pairs, NIfTI/MHA/DICOM geometry round trips and bad folders."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lightning_medaug.data.folder import FolderDataModule, Geometry
from lightning_medaug.data.phantom import make_phantoms
from lightning_medaug.data.splits import holdout_split
from lightning_medaug.data.transforms import classic_augmentation

SPACING, ORIGIN = (0.8, 1.2, 2.5), (10.0, -5.0, 3.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z: not the identity


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MEDAUG_DATA", raising=False)


def _write(array: np.ndarray, path: Path, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> None:
    image = sitk.GetImageFromArray(array)
    sd = array.ndim
    image.SetSpacing(spacing[:sd])
    image.SetOrigin(origin[:sd])
    image.SetDirection(direction if sd == 3 else (1.0, 0.0, 0.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _phantom_folder(root: Path, spatial_dims: int, size: int, suffix: str, n: int = 4):
    images, _, masks = make_phantoms(n, spatial_dims, size, seed=3)
    for i in range(n):
        _write((images[i, 0].numpy() * 1000).astype(np.int16), root / "image" / f"case{i}{suffix}")
        _write(masks[i, 0].numpy().astype(np.uint8), root / "label" / f"case{i}{suffix}")
    return images, masks


def test_isbi_shipped_pairs():
    dm = FolderDataModule(image_size=64, val_indices=[0, 1], test_indices=[2, 3, 29], batch_size=4)
    dm.setup()
    assert len(dm.stems) == 30 and dm.stems[:3] == ["0", "1", "2"]
    assert dm.splits == {"train": 25, "val": 2, "test": 3}
    assert set(dm.split_indices["test"]) == {2, 3, 29}
    assert not set(dm.split_indices["train"]) & (set(dm.split_indices["val"]) | set(dm.split_indices["test"]))
    assert (dm.spatial_dims, dm.in_channels, dm.image_size, dm.num_classes) == (2, 1, 64, 2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["image"].dtype == torch.float32
    # each image is rescaled on its own percentiles: every one spans most of [-1, 1] (downsizing 512 to
    # 64 pixels smooths the extremes away)
    lows, highs = dm.tensors["image"].flatten(1).aminmax(dim=1)
    assert (lows < -0.5).all() and (highs > 0.5).all()
    assert set(torch.unique(dm.tensors["mask"]).tolist()) == {0.0, 1.0}
    # Masks are 255 = cell interior: most of the area, membranes are thin.
    assert 0.5 < dm.tensors["mask"].mean() < 0.95

    fractions = FolderDataModule(image_size=32, val_fraction=0.1, test_fraction=0.2, split_seed=1)
    fractions.setup()
    parts = [set(fractions.split_indices[s]) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [21, 3, 6] and set.union(*parts) == set(range(30))


def test_training_subset_is_seeded_and_leaves_val_and_test_alone():
    kwargs = {"image_size": 16, "val_indices": [20, 21, 22, 23, 24], "test_indices": [25, 26, 27, 28, 29]}
    full = FolderDataModule(**kwargs)
    full.setup()
    quarter = FolderDataModule(subset=0.25, subset_seed=1, **kwargs)
    quarter.setup()
    assert quarter.splits == {"train": 5, "val": 5, "test": 5}
    assert set(quarter.subset_indices) < set(full.split_indices["train"])
    assert quarter.split_indices["test"] == full.split_indices["test"]
    again = FolderDataModule(subset=0.25, subset_seed=1, **kwargs)
    again.setup()
    assert again.subset_indices.tolist() == quarter.subset_indices.tolist()
    other = FolderDataModule(subset=0.25, subset_seed=2, **kwargs)
    other.setup()
    assert other.subset_indices.tolist() != quarter.subset_indices.tolist()
    half = FolderDataModule(subset=0.5, subset_seed=1, **kwargs)
    half.setup()
    assert set(quarter.subset_indices) <= set(half.subset_indices)  # nested subsets for studies
    with pytest.raises(ValueError, match="subset"):
        FolderDataModule(subset=1.5)


def test_trainer_runs_on_folder_with_augmentation():
    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(1, 1, 3, padding=1)

        def training_step(self, batch, _):
            return torch.nn.functional.binary_cross_entropy_with_logits(self.net(batch["image"]), batch["mask"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = FolderDataModule(image_size=32, batch_size=4, train_transforms=classic_augmentation(2, seed=0))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=2, limit_val_batches=1)
    trainer.fit(Probe(), datamodule=dm)
    assert trainer.global_step == 2
    # The augmentation never alters the cached tensors.
    assert set(torch.unique(dm.tensors["mask"]).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("image_size", [None, 8])
def test_nifti_round_trip_keeps_geometry(tmp_path, image_size):
    images, masks = _phantom_folder(tmp_path, 3, 16, ".nii.gz")
    dm = FolderDataModule(root=str(tmp_path), image_size=image_size, val_indices=[1], test_indices=[2],
                          intensity_percentiles=(0.0, 100.0))
    dm.setup()
    side = image_size or 16
    assert dm.spatial_dims == 3 and dm.tensors["image"].shape == (4, 1, side, side, side)
    if image_size is None:
        assert torch.equal(dm.tensors["mask"], masks)
        # min-max rescaling is affine: the stored voxels are the written ones, in the same order.
        stored, written = dm.tensors["image"][0].flatten(), (images[0] * 1000).to(torch.int16).float().flatten()
        assert torch.allclose(stored, (written - written.min()) / (written.max() - written.min()) * 2 - 1, atol=1e-5)
    out = dm.write_like(dm.tensors["mask"][3].to(torch.uint8), 3, tmp_path / "out" / "pred.nii.gz")
    back = sitk.ReadImage(str(out))
    assert back.GetSpacing() == pytest.approx(SPACING) and back.GetOrigin() == pytest.approx(ORIGIN)
    assert back.GetDirection() == pytest.approx(DIRECTION)
    voxels = sitk.GetArrayFromImage(back)
    if image_size is None:
        assert np.array_equal(voxels, masks[3, 0].numpy().astype(np.uint8))
    else:  # resampled back to the reference grid
        assert voxels.shape == (16, 16, 16) and (voxels == masks[3, 0].numpy()).mean() > 0.9


def test_mha_2d_and_labels_csv(tmp_path):
    _phantom_folder(tmp_path, 2, 24, ".mha", n=5)
    (tmp_path / "labels.csv").write_text("stem,label\n" + "".join(f"case{i},{'ab'[i % 2]}\n" for i in range(5)))
    dm = FolderDataModule(root=str(tmp_path), label_from="labels.csv", val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    assert dm.spatial_dims == 2 and dm.image_size == 24 and dm.splits == {"train": 3, "val": 1, "test": 1}
    assert dm.tensors["label"].tolist() == [0, 1, 0, 1, 0] and dm.class_names == ("a", "b") and dm.num_classes == 2
    sample = dm.train_dataset[0]
    assert set(sample) == {"image", "mask", "label"} and sample["label"].dtype == torch.int64


def _write_dicom_series(volume: np.ndarray, folder: Path, spacing=(0.7, 0.7, 2.0)) -> None:
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = [("0010|0010", "Doe^Jane"), ("0010|0020", "PID-12345"), ("0008|0060", "CT"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.4242"), ("0020|0037", "1\\0\\0\\0\\1\\0")]
    for z in reversed(range(volume.shape[0])):  # written out of order: the reader must sort by position
        slice_ = image[:, :, z]
        for tag, value in tags:
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))))
        slice_.SetMetaData("0020|0013", str(z + 1))
        writer.SetFileName(str(folder / f"slice{volume.shape[0] - z:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_reads_as_volume_and_leaks_no_tags(tmp_path):
    volume = (np.arange(6 * 10 * 12).reshape(6, 10, 12) % 97).astype(np.int16)
    _write_dicom_series(volume, tmp_path / "image" / "patient0")
    assert b"Doe^Jane" in (tmp_path / "image" / "patient0" / "slice001.dcm").read_bytes()  # the source has the tag
    dm = FolderDataModule(root=str(tmp_path), mask_dir=None, val_fraction=0.0, test_fraction=0.0,
                          intensity_percentiles=(0.0, 100.0))
    dm.setup()
    assert dm.spatial_dims == 3 and dm.tensors["image"].shape == (1, 1, 6, 10, 12) and dm.num_classes is None
    expected = torch.from_numpy(volume).float() / 96 * 2 - 1
    assert torch.allclose(dm.tensors["image"][0, 0], expected, atol=1e-5)
    assert dm.geometry[0].spacing == pytest.approx((0.7, 0.7, 2.0))
    out = dm.write_like(dm.tensors["image"][0], 0, tmp_path / "synthetic.mha", mode="linear")
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing() == pytest.approx((0.7, 0.7, 2.0))
    assert not any(key.startswith("0010") for key in written.GetMetaDataKeys())
    assert b"Doe^Jane" not in out.read_bytes() and b"PID-12345" not in out.read_bytes()


def test_mismatches_and_missing_partners(tmp_path):
    _phantom_folder(tmp_path, 3, 8, ".nii.gz", n=3)
    _write(np.zeros((8, 8, 9), np.uint8), tmp_path / "label" / "case1.nii.gz")
    shapes = r"case1\.nii\.gz has spatial shape \(8, 8, 8\) but mask .*case1.nii.gz has \(8, 8, 9\)"
    with pytest.raises(ValueError, match=shapes):
        FolderDataModule(root=str(tmp_path)).setup()

    _write(np.zeros((8, 8, 8), np.uint8), tmp_path / "label" / "case1.nii.gz", origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="differ in geometry"):
        FolderDataModule(root=str(tmp_path)).setup()

    (tmp_path / "label" / "case1.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"without a matching mask.*case1\.nii\.gz"):
        FolderDataModule(root=str(tmp_path)).setup()
    _write(np.zeros((8, 8, 8), np.uint8), tmp_path / "label" / "case7.nii.gz")
    (tmp_path / "image" / "case1.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"mask\(s\) without a matching image.*case7"):
        FolderDataModule(root=str(tmp_path)).setup()


def test_empty_and_missing_folders_and_bad_arguments(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no images in"):
        FolderDataModule(root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        FolderDataModule(root=str(tmp_path / "nowhere")).setup()
    for kwargs, match in (({"spatial_dims": 4}, "spatial_dims"), ({"mask_threshold": 1.0}, "mask_threshold"),
                          ({"val_indices": [0], "val_fraction": 0.1}, "either"), ({"batch_size": 0}, "batch_size"),
                          ({"intensity_percentiles": (50, 5)}, "intensity_percentiles")):
        with pytest.raises(ValueError, match=match):
            FolderDataModule(**kwargs)
    with pytest.raises(ValueError, match="no training samples left"):
        FolderDataModule(image_size=16, val_fraction=0.5, test_fraction=0.5).setup()


def test_write_like_accepts_a_geometry(tmp_path):
    geometry = Geometry(shape=(4, 5, 6), spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
    dm = FolderDataModule(spatial_dims=3)
    out = dm.write_like(torch.ones(1, 4, 5, 6), geometry, tmp_path / "ones.nrrd")
    back = sitk.ReadImage(str(out))
    assert Geometry.of(back).matches(geometry) and sitk.GetArrayFromImage(back).dtype == np.float32


def test_holdout_split_rules_and_env_root(tmp_path, monkeypatch):
    split = holdout_split(10, val_indices=[9, -2], test_fraction=0.25, seed=0)
    assert split["val"] == [8, 9] and len(split["test"]) == 3 and len(split["train"]) == 5
    assert not set(split["test"]) & {8, 9}
    assert holdout_split(10, test_fraction=0.25, seed=0) == holdout_split(10, test_fraction=0.25, seed=0)
    for kwargs, match in (({"val_indices": [1], "test_indices": [1]}, "overlap"), ({"val_indices": [10]}, "outside"),
                          ({"val_indices": [2, 2]}, "duplicate"), ({"test_fraction": 1.0}, "test_fraction")):
        with pytest.raises(ValueError, match=match):
            holdout_split(10, **kwargs)
    monkeypatch.setenv("MEDAUG_DATA", str(tmp_path))
    assert FolderDataModule().root == tmp_path / "isbi2012-em"


def test_per_axis_image_size_gives_non_square_grids(tmp_path):
    _phantom_folder(tmp_path, 2, 24, ".mha", n=4)
    dm = FolderDataModule(root=str(tmp_path), image_size=(20, 12), val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    assert dm.image_size == (20, 12) and dm.train_dataset[0]["image"].shape == (1, 20, 12)
    assert dm.train_dataset[0]["mask"].shape == (1, 20, 12)
    with pytest.raises(ValueError, match="2 axes"):
        FolderDataModule(root=str(tmp_path), image_size=(20, 12, 8)).setup()
    with pytest.raises(ValueError, match="one per axis"):
        FolderDataModule(image_size=(20, 2))
