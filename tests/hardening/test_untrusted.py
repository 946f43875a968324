"""Untrusted files and patient data.

* Nothing loads a pickle that could run code: a checkpoint crafted to run code when unpickled is
  refused by ``medaug fit --ckpt_path``, by ``--ckpt_path last`` even with
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, by ``load_generator`` / ``from_pretrained`` /
  ``medaug generate``, and pickles hidden in banks and npz files are refused too; the marker file
  the payload would write never appears.
* DICOM tags that identify the patient never reach what a fit + generate pipeline writes, nor its
  console output; run folders, banks and generator folders hold no absolute path of this machine.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.cli import main
from lightning_medaug.data import MedMNISTDataModule, make_phantoms
from lightning_medaug.generative import GenerativeModule, load_generator
from lightning_medaug.registry import create_generator

TINY_VAE = {"image_size": 16, "channels": [8, 8], "norm_num_groups": 4, "latent_channels": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """Unpickling this runs ``open(marker, "w")``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint whose unpickling writes ``marker``."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0, "global_step": 0, "payload": Payload(marker)}, path)
    return path


def phantom_recipe(root: Path, **trainer) -> Path:
    recipe = {"seed_everything": 0,
              "model": {"class_path": "lightning_medaug.generative.vae.VAE", "init_args": TINY_VAE},
              "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                       "init_args": {"image_size": 16, "num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4}},
              "trainer": {"max_steps": 2, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False, "logger": False, "default_root_dir": str(root), **trainer}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def refused(capsys, argv: list[str], marker: Path, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medaug: error: ") and match in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)
    assert not marker.exists(), "the crafted checkpoint ran code"


def test_crafted_checkpoint_is_refused_by_the_cli(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError):  # the premise: weights_only=True refuses it
        torch.load(evil, weights_only=True)
    assert not marker.exists()
    recipe = phantom_recipe(tmp_path)
    for command in ("fit", "validate", "test"):
        refused(capsys, [command, "--config", str(recipe), "--ckpt_path", str(evil)], marker,
                "would build io.open when loaded")
    refused(capsys, ["fit", "--config", str(recipe), "--ckpt_path", str(evil), "--weights_only", "false"], marker,
            "would build io.open")


def test_crafted_last_or_hpc_checkpoint_is_refused_even_when_torch_is_told_to_unpickle(tmp_path, capsys,
                                                                                       monkeypatch):
    """``--ckpt_path last`` / ``hpc`` name files Lightning finds itself. medaug checks the last checkpoint
    before the run, and passes weights_only=True explicitly, which the environment variable that turns
    torch's default off cannot override (the hpc case shows that second guard)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    (tmp_path / "ckpts").mkdir()
    crafted_checkpoint(tmp_path / "ckpts" / "last.ckpt", marker)
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "ckpts"), "save_last": True}}
    recipe = phantom_recipe(tmp_path, callbacks=[checkpoint])
    refused(capsys, ["fit", "--config", str(recipe), "--ckpt_path", "last"], marker, "would build io.open when loaded")
    refused(capsys, ["fit", "--config", str(recipe), "--ckpt_path", "last", "--weights_only", "false"], marker,
            "--weights_only false is refused")
    crafted_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", marker)  # where SLURM auto-requeue saves and resumes
    refused(capsys, ["fit", "--config", str(phantom_recipe(tmp_path)), "--ckpt_path", "hpc"], marker,
            "refused to load a checkpoint that is not plain weights (Unsupported global: GLOBAL io.open")


def test_generators_load_only_from_safetensors(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(FileNotFoundError, match="pass a folder written by save_pretrained"):
        load_generator(evil)
    folder = create_generator("vae", **TINY_VAE).save_pretrained(tmp_path / "vae")
    shutil.copy(evil, folder / "model.safetensors")  # a pickle under the safetensors name
    for load in (load_generator, GenerativeModule.from_pretrained):
        with pytest.raises(ValueError, match="is not a readable safetensors file"):
            load(folder)
    refused(capsys, ["generate", "--model", str(folder), "--num-samples", "2", "--out", str(tmp_path / "bank")], marker,
            "is not a readable safetensors file")
    assert not (tmp_path / "bank").exists()


def test_pickles_in_banks_and_npz_files_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    torch.manual_seed(0)
    model = create_generator("cvae", num_classes=2, **TINY_VAE)
    write_bank(model, tmp_path / "bank", 4, shard_size=4, progress=False)
    shard = shard_files(tmp_path / "bank", 0).images
    np.save(shard, np.array([Payload(marker)] * 4, dtype=object).reshape(4, 1, 1, 1), allow_pickle=True)
    with pytest.raises(ValueError, match="is unreadable"):
        SyntheticBank(tmp_path / "bank")
    (tmp_path / "data").mkdir()
    images = np.empty(8, dtype=object)
    images[:] = [Payload(marker)] * 8
    arrays = {f"{s}_{p}": images if p == "images" else np.zeros((8, 1), np.uint8)
              for s in ("train", "val", "test") for p in ("images", "labels")}
    np.savez(tmp_path / "data" / "pneumoniamnist.npz", **arrays)
    with pytest.warns(UserWarning, match="MD5"), pytest.raises(ValueError, match="unreadable"):
        MedMNISTDataModule(root=str(tmp_path / "data")).setup("fit")
    assert not marker.exists()


# -- patient data ------------------------------------------------------------------------------------
PHI = {"0010|0010": "Doe^Jane", "0010|0020": "PID-12345", "0010|0030": "19700101", "0008|0050": "ACC-98765",
       "0010|1000": "OTHER-ID-555", "0008|0080": "St Elsewhere Hospital", "0008|0090": "House^Gregory",
       "0010|1040": "42 Wallaby Way", "0010|2154": "5550199"}


def write_dicom_slices(folder: Path, n: int = 4) -> None:
    """``n`` 2D DICOM files (one per case) carrying the identifying tags of ``PHI``."""
    images, _, _ = make_phantoms(n, 2, 16, seed=5)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(n):
        image = sitk.GetImageFromArray((images[i, 0].numpy() * 1000).astype(np.int16))
        for tag, value in {**PHI, "0008|0060": "CT", "0020|000e": f"1.2.826.0.1.3680043.2.1125.9.{i}"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"case{i}.dcm"))
        writer.Execute(image)


def leaks(data: bytes) -> list[str]:
    """The identifying values found in ``data`` (also upper/lower case, and the name's parts)."""
    needles = {*PHI.values(), "Doe", "Jane", "Gregory", "Elsewhere", "Wallaby"}
    found = []
    for needle in needles:
        if any(form.encode() in data for form in (needle, needle.upper(), needle.lower())):
            found.append(needle)
    return found


def test_dicom_tags_never_reach_outputs_logs_or_absolute_paths(tmp_path, capsys, monkeypatch):
    write_dicom_slices(tmp_path / "dicom" / "image")
    source = (tmp_path / "dicom" / "image" / "case0.dcm").read_bytes()
    assert "Doe^Jane" in leaks(source) and "PID-12345" in leaks(source)  # the input does carry them
    monkeypatch.chdir(tmp_path)  # relative paths in, so any absolute path out came from the library
    recipe = {"seed_everything": 0,
              "model": {"class_path": "lightning_medaug.generative.vae.VAE", "init_args": TINY_VAE},
              "data": {"class_path": "lightning_medaug.data.FolderDataModule",
                       "init_args": {"root": "dicom", "mask_dir": None, "image_size": 16, "val_indices": [3],
                                     "test_fraction": 0.0, "batch_size": 3}},
              "trainer": {"max_epochs": 2, "accelerator": "cpu", "log_every_n_steps": 1,
                          "enable_progress_bar": False, "enable_model_summary": False,
                          "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                     "init_args": {"save_dir": "runs", "name": "leak"}},
                          "callbacks": [{"class_path": "lightning_medaug.generative.callbacks.SampleGridCallback",
                                         "init_args": {"num_samples": 4}}]}}
    Path("recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", "recipe.yaml"]) == 0
    run = Path("runs/leak/version_0")
    assert main(["generate", "--model", str(run / "generator"), "--num-samples", "6", "--shard-size", "4",
                 "--out", "bank", "--no-progress"]) == 0
    assert len(SyntheticBank("bank")) == 6
    console = capsys.readouterr()
    outputs = [p for p in (*Path("runs").rglob("*"), *Path("bank").rglob("*")) if p.is_file()]
    kinds = {p.suffix for p in outputs}
    assert {".yaml", ".csv", ".json", ".png", ".ckpt", ".safetensors", ".npy", ".jsonl"} <= kinds, kinds
    for path in outputs:
        assert not leaks(path.read_bytes()), f"{path} holds {leaks(path.read_bytes())}"
    assert not leaks((console.out + console.err).encode())
    # Lightning's own .ckpt files keep ModelCheckpoint's absolute dirpath; every report and manifest is clean.
    machine = [str(tmp_path).encode(), os.path.expanduser("~").encode()]
    for path in outputs:
        if path.suffix != ".ckpt":
            assert not any(m in path.read_bytes() for m in machine), f"{path} holds an absolute path"
