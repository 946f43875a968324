"""Bad input, catalogued: each case gives one line saying what is wrong and how to fix it, exit code 2
on the command line, and leaves every file as it was (nothing overwritten, nothing half-written).

docs/bad_input.md lists every case with the test that covers it, here or elsewhere. A data case runs
either through ``medaug fit`` in-process (``main(argv)``, about a second each: LightningCLI builds
its parsers) or, where another case already shows the CLI path for that input, straight through the
data module's ``setup("fit")``, which is what ``medaug fit`` calls.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.cli import main
from lightning_medaug.data import FolderDataModule, make_phantoms
from lightning_medaug.registry import create_generator

TINY_CVAE = {"channels": (8, 8), "norm_num_groups": 4, "latent_channels": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- what a clean failure looks like ----------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (empty folders are not files)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fails_cleanly(capsys, argv: list[str], match: str, root: Path) -> str:
    """Run ``medaug argv``; assert exit 2, one error line naming ``match``, no traceback, no file touched."""
    before = snapshot(root)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err[-5:]
    assert not any("Traceback" in line for line in err), "\n".join(err[-20:])
    errors = [line for line in err if line.startswith("medaug: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err[-5:]
    assert match in errors[0], errors[0]
    assert snapshot(root) == before, "a failed command wrote or changed files"
    _record(errors[0], root)
    return errors[0]


def _record(message: str, root: Path) -> None:
    """With ``MEDAUG_BAD_INPUT_LOG=FILE``, append the case and its message (paths shortened): the
    material of docs/bad_input.md, so the catalogue quotes what users really see."""
    log = os.environ.get("MEDAUG_BAD_INPUT_LOG")
    if log:
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
        text = message.replace(str(root.resolve()), "<dir>").replace(str(root), "<dir>")
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"case": case, "message": text}) + "\n")


def instantiate(spec: Any) -> Any:
    """Build ``{"class_path", "init_args"}`` specs (nested ones too), as LightningCLI does."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        args = {k: instantiate(v) for k, v in spec.get("init_args", {}).items()}
        return getattr(importlib.import_module(module), name)(**args)
    return spec


# -- tiny inputs ------------------------------------------------------------------------------------
CLASSIFIER = {"class_path": "lightning_medaug.tasks.ClassificationTask",
              "init_args": {"backbone": "test_resnet", "in_channels": 1, "num_classes": 2}}
VAE = {"class_path": "lightning_medaug.generative.vae.VAE", "init_args": {"image_size": 16, **TINY_CVAE}}
PHANTOMS = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": 16, "num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4}}


def write_recipe(root: Path, data: dict, model: dict = CLASSIFIER) -> Path:
    recipe = {"seed_everything": 0, "model": model, "data": data,
              "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                          "enable_model_summary": False,
                          "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                     "init_args": {"save_dir": str(root / "runs"), "name": "bad"}}}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_image(array: np.ndarray, path: Path, spacing=(1.0, 1.0), origin=(0.0, 0.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# MedMNIST npz files
def medmnist_arrays(**overrides) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    arrays.update(overrides)
    return arrays


def npz(write: Callable[[Path], None]) -> Callable[..., dict]:
    """The data spec of a MedMNIST folder whose npz file ``write`` made."""
    def build(root: Path, banks: dict[str, Path]) -> dict:
        (root / "data").mkdir()
        write(root / "data" / "pneumoniamnist.npz")
        return {"class_path": "lightning_medaug.data.MedMNISTDataModule",
                "init_args": {"name": "pneumoniamnist", "root": str(root / "data"), "batch_size": 4}}
    return build


def arrays(**overrides) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **medmnist_arrays(**overrides))


def truncated_npz(path: Path) -> None:
    np.savez(path, **medmnist_arrays())
    truncate(path)


def single_array(path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((8, 28, 28), np.uint8))  # an .npy saved under an .npz name
    path.write_bytes(buffer.getvalue())


# NIfTI / DICOM folders
def folder(damage: Callable[[Path], Any], **init_args) -> Callable[..., dict]:
    """The data spec of four 16x16 NIfTI image/mask pairs after ``damage(folder)``."""
    def build(root: Path, banks: dict[str, Path]) -> dict:
        where = root / "folder"
        images, _, masks = make_phantoms(4, 2, 16, seed=3)
        for i in range(4):
            write_image((images[i, 0].numpy() * 1000).astype(np.int16), where / "image" / f"case{i}.nii.gz")
            write_image(masks[i, 0].numpy().astype(np.uint8), where / "label" / f"case{i}.nii.gz")
        damage(where)
        return {"class_path": "lightning_medaug.data.FolderDataModule",
                "init_args": {"root": str(where), "image_size": 16, "val_fraction": 0.25, "batch_size": 2,
                              **init_args}}
    return build


def float_image_with(value: float, suffix: str = ".nii.gz") -> Callable[[Path], None]:
    def damage(where: Path) -> None:
        (where / "image" / "case1.nii.gz").unlink()
        array = np.zeros((16, 16), dtype=np.float32)
        array[4, 4] = value
        write_image(array, where / "image" / f"case1{suffix}")
    return damage


def corrupt_dicom(where: Path) -> None:
    (where / "image" / "case0.nii.gz").unlink()
    (where / "image" / "case0.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)


def two_dicom_series(where: Path) -> None:
    (where / "image" / "case0.nii.gz").unlink()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for s, uid in enumerate(("1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2")):
        for z in range(2):
            image = sitk.GetImageFromArray(np.full((16, 16), z + s, dtype=np.int16))
            for tag, value in (("0020|000e", uid), ("0020|0013", str(z + 1)), ("0020|0032", f"0\\0\\{z}")):
                image.SetMetaData(tag, value)
            (where / "image" / "case0").mkdir(exist_ok=True)
            writer.SetFileName(str(where / "image" / "case0" / f"s{s}_{z}.dcm"))
            writer.Execute(image)


def rgb_mask(where: Path) -> None:
    rgb = sitk.GetImageFromArray(np.zeros((16, 16, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(where / "label" / "case1.nii.gz"))


def resize_pair(where: Path) -> None:
    write_image(np.zeros((20, 20), np.int16), where / "image" / "case1.nii.gz")
    write_image(np.zeros((20, 20), np.uint8), where / "label" / "case1.nii.gz")


# banks and mixing
@pytest.fixture(scope="module")
def banks(tmp_path_factory) -> dict[str, Path]:
    """Small banks: the right one (16x16, 1 channel, 2 classes), banks for other data, and a generator."""
    root = tmp_path_factory.mktemp("banks")
    specs = {"good": {}, "size32": {"image_size": 32}, "rgb": {"in_channels": 3}, "classes3": {"num_classes": 3}}
    for name, spec in specs.items():
        torch.manual_seed(0)
        model = create_generator("cvae", **{"image_size": 16, "num_classes": 2, **TINY_CVAE, **spec})
        write_bank(model, root / name, 8, shard_size=4, batch_size=4, progress=False)
    torch.manual_seed(0)
    create_generator("cvae", image_size=16, num_classes=2, **TINY_CVAE).save_pretrained(root / "model")
    return {**{name: root / name for name in specs}, "model": root / "model"}


def mix(bank: str, damage: Callable[[Path], Any] | None = None, **options) -> Callable[..., dict]:
    """The data spec of phantoms mixed with a copy of bank ``bank``, after ``damage(copy)``."""
    def build(root: Path, banks: dict[str, Path]) -> dict:
        copy = root / "bank"
        shutil.copytree(banks[bank], copy)
        if damage is not None:
            damage(copy)
        return {"class_path": "lightning_medaug.mixing.SyntheticMixDataModule",
                "init_args": {"datamodule": PHANTOMS, "bank": str(copy), "ratio": 0.5, **options}}
    return build


def drop_manifest_rows(bank: Path) -> None:
    manifest = bank / "manifest.csv"
    manifest.write_text("".join(manifest.read_text(encoding="utf-8").splitlines(keepends=True)[:-2]))


def relabel_manifest(bank: Path) -> None:
    manifest = bank / "manifest.csv"
    lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    cells = lines[1].split(",")
    cells[3] = "9"  # the label column
    lines[1] = ",".join(cells)
    manifest.write_text("".join(lines))


@dataclass(frozen=True)
class DataCase:
    data: Callable[..., dict]
    match: str
    cli: bool = True  # False: through setup("fit"); the CLI path of this input is shown by another case
    model: dict | None = None


DATA_CASES: dict[str, DataCase] = {
    # MedMNIST npz (more npz cases in tests/test_cli.py and tests/data/test_medmnist.py)
    "npz-truncated": DataCase(npz(truncated_npz), "truncated or corrupt"),
    "npz-wrong-image-dtype": DataCase(npz(arrays(train_images=np.zeros((8, 28, 28), np.int32))),
                                      "train_images has dtype int32, expected uint8"),
    "npz-inf-pixels": DataCase(npz(arrays(train_images=np.full((8, 28, 28), np.inf, np.float32))), "NaN or infinite"),
    "npz-empty-split": DataCase(npz(arrays(val_images=np.zeros((0, 28, 28), np.uint8),
                                           val_labels=np.zeros((0, 1), np.uint8))), "val_images is empty"),
    "npz-single-array": DataCase(npz(single_array), "not an npz (zip) archive", cli=False),
    "npz-pixels-out-of-range": DataCase(npz(arrays(val_images=np.full((4, 28, 28), 7.0, np.float32))),
                                        "float images must be in [0, 1]", cli=False),
    "npz-non-integer-labels": DataCase(npz(arrays(train_labels=np.full((8, 1), 0.5, np.float32))),
                                       "non-integer values", cli=False),
    # NIfTI / DICOM folders (more in tests/data/test_folder.py)
    "nifti-truncated": DataCase(folder(lambda f: truncate(f / "image" / "case2.nii.gz")), "truncated", model=VAE),
    "nifti-nan-pixels": DataCase(folder(float_image_with(float("nan"))), "case1.nii.gz holds NaN or infinite",
                                 model=VAE),
    "dicom-corrupt": DataCase(folder(corrupt_dicom), "cannot read", model=VAE),
    "mask-other-geometry": DataCase(folder(lambda f: write_image(np.zeros((16, 16), np.uint8), f / "label" /
                                                                 "case1.nii.gz", spacing=(2.0, 2.0))),
                                    "differ in geometry", model=VAE),
    "nifti-corrupt": DataCase(folder(lambda f: (f / "image" / "case1.nii.gz").write_bytes(b"\x1f\x8b garbage")),
                              "cannot read", cli=False),
    "nifti-inf-pixels": DataCase(folder(float_image_with(float("inf"))), "NaN or infinite", cli=False),
    "mha-inf-pixels": DataCase(folder(float_image_with(float("-inf"), ".mha")), "case1.mha holds NaN or infinite",
                               cli=False),
    "dicom-two-series": DataCase(folder(two_dicom_series), "exactly one DICOM series", cli=False),
    "mask-other-size": DataCase(folder(lambda f: write_image(np.zeros((16, 20), np.uint8),
                                                             f / "label" / "case1.nii.gz")),
                                "has spatial shape", cli=False),
    "mask-rgb": DataCase(folder(rgb_mask), "channels, expected 1", cli=False),
    "mask-missing": DataCase(folder(lambda f: (f / "label" / "case3.nii.gz").unlink()), "without a matching mask",
                             cli=False),
    "folder-empty": DataCase(folder(lambda f: [p.unlink() for p in (f / "image").iterdir()]), "no images in",
                             cli=False),
    "folder-sizes-differ": DataCase(folder(resize_pair, image_size=None), "differ in shape", cli=False),
    "split-empty-train": DataCase(folder(lambda f: None, val_fraction=0.5, test_fraction=0.5),
                                  "no training samples left", cli=False),
    "labels-csv-missing-stem": DataCase(folder(lambda f: (f / "labels.csv").write_text("stem,label\ncase0,0\n"),
                                               label_from="labels.csv"), "has no label for", cli=False),
    # mixing and banks (more in tests/mixing/test_mix.py and tests/bank/test_bank_reader.py)
    "ratio-above-1": DataCase(mix("good", ratio=1.5), "ratio must lie in [0, 1]"),
    "bank-other-channels": DataCase(mix("rgb"), "another image size or channel count"),
    "bank-other-classes": DataCase(mix("classes3"), "labels up to 2 but the data has 2 classes"),
    "bank-manifest-truncated": DataCase(mix("good", drop_manifest_rows), "lists 2 rows of shard 1"),
    "bank-json-corrupt": DataCase(mix("good", lambda b: (b / "bank.json").write_text("{not json")),
                                  "is not a bank description"),
    "bank-other-image-size": DataCase(mix("size32"), "another image size or channel count", cli=False),
    "bank-shard-missing": DataCase(mix("good", lambda b: shard_files(b, 1).images.unlink()), "is missing", cli=False),
    "bank-label-out-of-range": DataCase(mix("good", relabel_manifest), "holds labels outside [0, 1]", cli=False),
    "bank-not-a-bank": DataCase(mix("good", lambda b: (b / "bank.json").unlink()), "not a synthetic bank", cli=False),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_bad_data(name, tmp_path, capsys, banks):
    case = DATA_CASES[name]
    spec = case.data(tmp_path, banks)
    if case.cli:
        recipe = write_recipe(tmp_path, spec, case.model or CLASSIFIER)
        fails_cleanly(capsys, ["fit", "--config", str(recipe)], case.match, tmp_path)
        return
    before = snapshot(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        instantiate(spec).setup("fit")
    assert case.match in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert snapshot(tmp_path) == before
    _record(str(err.value), tmp_path)


# -- medaug generate ------------------------------------------------------------------------------------
def generate(*args: str, model: Callable[[Path, Path], Path] | None = None) -> Callable[..., list[str]]:
    """``medaug generate`` with ``args`` on the tiny cVAE (or on ``model(root, good_model)``)."""
    def build(root: Path, banks: dict[str, Path]) -> list[str]:
        where = banks["model"] if model is None else model(root, banks["model"])
        return ["generate", "--model", str(where), "--out", str(root / "out"), "--no-progress",
                *(a.format(root=root) for a in args)]
    return build


def edited_model(edit: Callable[[Path], Any]) -> Callable[[Path, Path], Path]:
    def make(root: Path, good: Path) -> Path:
        shutil.copytree(good, root / "model")
        edit(root / "model")
        return root / "model"
    return make


def edit_config(**changes) -> Callable[[Path], None]:
    def edit(where: Path) -> None:
        config = json.loads((where / "config.json").read_text(encoding="utf-8"))
        config.update({k: v for k, v in changes.items() if k == "generator"})
        config["init_args"].update({k: v for k, v in changes.items() if k != "generator"})
        (where / "config.json").write_text(json.dumps(config))
    return edit


def with_masks(count: int) -> Callable[..., list[str]]:
    def build(root: Path, banks: dict[str, Path]) -> list[str]:
        (root / "masks").mkdir()
        for i in range(count):
            write_image(np.full((16, 16), 255, np.uint8), root / "masks" / f"m{i}.png")
        return generate("--num-samples", "4", "--masks", "{root}/masks")(root, banks)
    return build


GENERATE_CASES: dict[str, tuple[Callable[..., list[str]], str]] = {
    "unknown-generator": (generate("--num-samples", "4", model=edited_model(edit_config(generator="cvea"))),
                          "unknown generator 'cvea'. Did you mean 'cvae'"),
    "weights-not-safetensors": (generate("--num-samples", "4", model=edited_model(
        lambda f: (f / "model.safetensors").write_bytes(b"\x80\x04 a pickle"))), "is not a readable safetensors file"),
    "weights-for-other-channels": (generate("--num-samples", "4", model=edited_model(edit_config(in_channels=3))),
                                   "does not match a cvae"),
    "model-missing": (generate("--num-samples", "4", model=lambda root, good: root / "no_model"), "not found"),
    "class-out-of-range": (generate("--labels", "0:4,7:4"), "name classes [7]"),
    "zero-samples": (generate("--num-samples", "0"), "num_samples must be a positive integer"),
    "bad-dtype": (generate("--num-samples", "4", "--dtype", "int8"), "invalid choice"),
    "bad-shard-size": (generate("--num-samples", "4", "--shard-size", "0"), "shard_size must be a positive integer"),
    "bad-batch-size": (generate("--num-samples", "4", "--batch-size", "0"), "batch_size must be a positive integer"),
    "proportions-without-plan": (generate("--num-samples", "4", "--proportions", "0:0.5,1:0.5"),
                                 "proportions only apply"),
    "masks-folder-empty": (with_masks(0), "no mask files"),
    "masks-for-a-class-model": (with_masks(1), "is not mask-conditional: drop the masks"),
}


@pytest.mark.parametrize("name", sorted(GENERATE_CASES))
def test_bad_generate_arguments(name, tmp_path, capsys, banks):
    build, match = GENERATE_CASES[name]
    fails_cleanly(capsys, build(tmp_path, banks), match, tmp_path)
    assert not (tmp_path / "out").exists()


def test_generate_into_a_file_or_a_foreign_folder_leaves_it_alone(banks, tmp_path, capsys):
    (tmp_path / "out").write_text("my notes")
    fails_cleanly(capsys, generate("--num-samples", "4")(tmp_path, banks), "is a file", tmp_path)
    (tmp_path / "out").unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("my notes")
    fails_cleanly(capsys, generate("--num-samples", "4")(tmp_path, banks), "is not empty", tmp_path)


def test_complete_bank_is_left_untouched_by_a_conflicting_rerun(banks, tmp_path, capsys):
    shutil.copytree(banks["good"], tmp_path / "out")
    args = generate("--num-samples", "8", "--shard-size", "4", "--batch-size", "4", "--seed", "1")(tmp_path, banks)
    fails_cleanly(capsys, args, "already holds a bank written with other settings", tmp_path)
    assert len(SyntheticBank(tmp_path / "out")) == 8


# -- checkpoints and recipes ------------------------------------------------------------------------------
def truncated_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "epoch": 1}, path)
    truncate(path)


@pytest.mark.parametrize("write, match", [
    (None, "not found"),
    (truncated_checkpoint, "is not a readable checkpoint"),
    (lambda p: p.write_text("epoch: 3\n"), "is not a readable checkpoint"),
], ids=["missing", "truncated", "not-a-checkpoint"])
def test_bad_checkpoint(write, match, tmp_path, capsys):
    if write is not None:
        write(tmp_path / "model.ckpt")
    argv = ["fit", "--config", str(write_recipe(tmp_path, PHANTOMS)), "--ckpt_path", str(tmp_path / "model.ckpt")]
    fails_cleanly(capsys, argv, match, tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda text: text.replace("PhantomDataModule", "PhantomDataModul"), "PhantomDataModul"),
    (lambda text: text.replace("trainer:", "trainr:"), "trainr"),
    (lambda text: text.replace("num_train: 8", "num_train: 0"), "num_train must be at least 1"),
], ids=["typo-in-class-path", "typo-in-section", "bad-value"])
def test_bad_recipe(edit, match, tmp_path, capsys):
    recipe = write_recipe(tmp_path, PHANTOMS)
    recipe.write_text(edit(recipe.read_text(encoding="utf-8")))
    fails_cleanly(capsys, ["fit", "--config", str(recipe)], match, tmp_path)


# -- the Python API ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: create_generator("ddpmm"), "unknown generator 'ddpmm'. Did you mean 'ddpm'"),
    (lambda: FolderDataModule(mask_threshold=1.5), r"mask_threshold must be in \(0, 1\)"),
    (lambda: write_bank(create_generator("pix2pix", image_size=16, generator_channels=8, generator_levels=2,
                                         discriminator_channels=8), "unused", 4,
                        masks=np.zeros((2, 1, 8, 8), np.uint8), progress=False),
     r"masks must have shape \(M, 1, 16, 16\)"),
], ids=["unknown-generator", "mask-threshold", "masks-other-size"])
def test_python_api_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    assert not Path("unused").exists()
    _record(str(err.value), Path.cwd())
