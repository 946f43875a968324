"""recipes/cvae_phantom3d_anisotropic.yaml end to end through the CLI, a few steps: fit on
16x24x32 volumes of 2.5 x 0.8 x 0.8 mm, generate NIfTI with --geometry-from the recipe, and the
files carry that shape and spacing; and the README's section on such volumes runs as pasted."""

import os
import re
import subprocess
import sys
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


def _readme_blocks() -> list[tuple[str, str]]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = re.split(r"\n##+ ", text.split("### Non-cubic and anisotropic volumes\n", 1)[1], maxsplit=1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


def test_readme_anisotropic_section_runs_as_pasted(tmp_path, monkeypatch, capsys):
    """Its bash blocks in a shell (the fit cut to a few steps), then its Python blocks, whose printed
    lines must be what their comments say."""
    blocks = _readme_blocks()
    assert [kind for kind, _ in blocks] == ["bash", "python", "python"]
    (tmp_path / "recipes").symlink_to(RECIPE.parent)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    for kind, code in blocks:
        if kind == "bash":
            code = re.sub(r"^(medaug fit [^#\n]*?)\s*(#.*)?$", lambda m: f"{m.group(1)} {' '.join(FEW)}", code,
                          flags=re.M)
            done = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                  encoding="utf-8", errors="replace", timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    for kind, code in blocks:
        if kind == "python":
            capsys.readouterr()
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
            expected = re.findall(r"^print\(.*\)\s+# (.*)$", code, flags=re.M)
            assert capsys.readouterr().out.splitlines() == expected
