"""recipes/cvae_phantom3d_anisotropic.yaml end to end through the CLI, a few steps: fit on
16x24x32 volumes of 2.5 x 0.8 x 0.8 mm, generate NIfTI with --geometry-from the recipe, and the
files carry that shape and spacing."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lightning_medaug.bank import SyntheticBank
from lightning_medaug.cli import main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "cvae_phantom3d_anisotropic.yaml"
FEW = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
       "--trainer.enable_progress_bar", "false", "--data.init_args.num_train", "8", "--data.init_args.num_val", "4",
       "--data.init_args.num_test", "4", "--data.init_args.batch_size", "4"]


@pytest.mark.usefixtures("one_torch_thread")
def test_anisotropic_recipe_fits_and_writes_nifti_with_its_geometry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(RECIPE), *FEW]) == 0
    generator = tmp_path / "runs" / "cvae_phantom3d_anisotropic" / "version_0" / "generator"
    assert (generator / "model.safetensors").is_file()
    assert main(["generate", "--model", str(generator), "--num-samples", "4", "--format", "nifti",
                 "--geometry-from", str(RECIPE), "--out", "banks/cvae3d", "--no-progress"]) == 0
    bank = SyntheticBank(tmp_path / "banks" / "cvae3d")
    assert bank.image_shape == (1, 16, 24, 32) and bank.class_counts().tolist() == [2, 2]
    assert bank.geometry.spacing == pytest.approx((0.8, 0.8, 2.5))  # SimpleITK's (x, y, z) = the recipe's (W, H, D)
    for i in range(4):
        image = sitk.ReadImage(str(bank.path / "image" / f"{i:06d}.nii.gz"))
        array = sitk.GetArrayFromImage(image)
        assert array.shape == (16, 24, 32) and image.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
        np.testing.assert_array_equal(array, bank[i]["image"][0].numpy())
        assert array.std() > 0.01  # an image, not a constant
