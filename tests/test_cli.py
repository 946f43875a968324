"""The `medaug` command: real runs write a complete run folder; bad input gives one line and exit 2."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_medaug.cli import main, out_of_memory

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, **data_overrides) -> Path:
    """A classification recipe on 16x16 phantoms, small enough for a test."""
    data = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": 16, "num_train": 32, "num_val": 16, "num_test": 16, "batch_size": 16}}
    if "class_path" in data_overrides:  # another data module: its own arguments only
        data = {"class_path": data_overrides["class_path"], "init_args": {}}
    data["init_args"].update(data_overrides.get("init_args", {}))
    recipe = {
        "seed_everything": 0,
        "model": {"class_path": "lightning_medaug.tasks.ClassificationTask",
                  "init_args": {"backbone": "test_resnet", "in_channels": 1, "num_classes": 2}},
        "data": data,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"monitor": "val/auc", "mode": "max"}}]},
        "summary": {"monitor": "val/auc", "mode": "max"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_folder(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "tiny" / "version_0"


def test_fit_then_test_writes_a_complete_run_folder(tmp_path):
    recipe = tiny_recipe(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(recipe)]) == 0
    # a third-party deprecation a user cannot act on stays out of the command's output
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    folder = run_folder(tmp_path)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"]["init_args"]["backbone"] == "test_resnet"  # the resolved config
    assert config["trainer"]["max_epochs"] == 2
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert len(metrics["history"]) == 2
    # the summary's best is the epoch of highest val/auc (mode max), the one ModelCheckpoint kept
    best = metrics["monitor"]["best"]
    assert best == max(metrics["history"], key=lambda row: row["val/auc"])
    assert (folder / "curves.png").stat().st_size > 1000
    ckpt = next((folder / "checkpoints").glob("*.ckpt"))
    assert metrics["best_checkpoint"] == ckpt.name == f"epoch={int(best['epoch'])}-step={int(best['step'])}.ckpt"
    # Testing the checkpoint adds the test figures to a new run folder's metrics.json.
    assert main(["test", "--config", str(recipe), "--ckpt_path", str(ckpt)]) == 0
    test_metrics = json.loads((tmp_path / "runs" / "tiny" / "version_1" / "metrics.json").read_text(encoding="utf-8"))
    assert set(test_metrics["test"]) >= {"test/auc", "test/acc", "test/loss"}


def test_batch_size_finder_from_the_command_line_is_recorded(tmp_path):
    """Lightning's BatchSizeFinder, added on the command line, sizes the batches; metrics.json says
    which batch size the run trained with (config.yaml keeps the recipe's)."""
    recipe = tiny_recipe(tmp_path)
    assert main(["fit", "--config", str(recipe), "--trainer.max_epochs", "1",
                 "--trainer.callbacks+=lightning.pytorch.callbacks.BatchSizeFinder",
                 "--trainer.callbacks.init_args.max_trials", "2", "--trainer.callbacks.init_args.steps_per_trial",
                 "1"]) == 0
    folder = run_folder(tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["fit"]["batch_size"] == 4  # 2, then 4: two trials
    assert yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["data"]["init_args"]["batch_size"] == 16


def _fails_cleanly(capsys, argv, match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err, "expected an error line on stderr"
    last = err[-1]
    assert last.startswith("medaug: error: "), last
    assert match in last, last
    assert not any("Traceback" in line for line in err)
    return last


def _npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def _pneumonia_arrays(**overrides):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    arrays.update(overrides)
    return {k: v for k, v in arrays.items() if v is not None}


def _medmnist_recipe(tmp_path: Path, root: Path) -> Path:
    return tiny_recipe(tmp_path, class_path="lightning_medaug.data.MedMNISTDataModule",
                       init_args={"name": "pneumoniamnist", "root": str(root), "batch_size": 4})


BAD_DATA = {
    "missing file": (None, "pneumoniamnist.npz"),
    "corrupt npz": (b"this is not an npz archive", "pneumoniamnist.npz"),
    "missing keys": (dict(test_images=None), "test_images"),
    "wrong shape": (dict(train_images=np.zeros((8, 28), dtype=np.uint8)), "train_images"),
    "NaN images": (dict(train_images=np.full((8, 28, 28), np.nan, dtype=np.float32)), "NaN"),
    "labels out of range": (dict(train_labels=np.full((8, 1), 7, dtype=np.uint8)), "label"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_gives_one_line_and_exit_2(tmp_path, capsys, case):
    content, match = BAD_DATA[case]
    root = tmp_path / "data"
    root.mkdir()
    target = root / "pneumoniamnist.npz"
    if isinstance(content, bytes):
        target.write_bytes(content)
    elif isinstance(content, dict):
        _npz(target, **_pneumonia_arrays(**content))
    before = sorted(p.name for p in root.iterdir())
    recipe = _medmnist_recipe(tmp_path, root)
    _fails_cleanly(capsys, ["fit", "--config", str(recipe)], match)
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written next to the data
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()


@pytest.mark.parametrize("argv_tail, match", [
    (["--model.init_args.backbone", "resnet18x"], "resnet18x"),
    (["--trainer.max_epochz", "1"], "max_epochz"),
    (["--model.init_args.in_channels", "3"], "in_channels"),
    (["--model.init_args.num_classes", "5"], "num_classes"),
    (["--data.init_args.image_size", "3"], "image_size"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, argv_tail, match):
    recipe = tiny_recipe(tmp_path)
    _fails_cleanly(capsys, ["fit", "--config", str(recipe), *argv_tail], match)


def test_out_of_memory_gives_one_line_and_exit_1(tmp_path, capsys):
    # 10^7-pixel phantoms ask the CPU allocator for 728 TiB: more than any address space holds
    recipe = tiny_recipe(tmp_path)
    assert main(["fit", "--config", str(recipe), "--data.init_args.image_size", str(10**7)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("medaug: error: out of memory (the host could not allocate 727.6 TiB)"), err[0]
    assert "--data.init_args.batch_size" in err[0] and "bf16-mixed" in err[0]


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.05 GiB "
        "is free. Process 51 has 78.1 GiB memory in use. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
     "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.05 GiB "
     "is free"),
    (RuntimeError("rank 1 failed: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 1 has a total capacity of "
                  "79.19 GiB of which 3.94 MiB is free. Of the allocated memory 78.6 GiB is allocated by PyTorch"),
     "rank 1 failed: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 1 has a total capacity of 79.19 GiB of "
     "which 3.94 MiB is free"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
     "the host could not allocate 1.0 TiB"),
    (RuntimeError("Expected all tensors to be on the same device"), None),
    (ValueError("image_size must be at least 8"), None),
])
def test_out_of_memory_messages(error, expected):
    assert out_of_memory(error) == expected


def test_out_of_memory_from_real_allocators():
    with pytest.raises(RuntimeError) as torch_error:
        torch.empty(2**45)  # 128 TiB of float32
    assert out_of_memory(torch_error.value) == "the host could not allocate 128.0 TiB"
    with pytest.raises(MemoryError) as numpy_error:
        np.empty(2**50, dtype=np.uint8)
    assert out_of_memory(numpy_error.value).startswith("Unable to allocate 1.00 PiB")


def test_missing_recipe_and_typo_in_recipe(tmp_path, capsys):
    _fails_cleanly(capsys, ["fit", "--config", str(tmp_path / "nope.yaml")], "nope.yaml")
    recipe = tiny_recipe(tmp_path)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("num_train", "num_trian"))
    _fails_cleanly(capsys, ["fit", "--config", str(recipe)], "num_trian")


def test_unknown_command_and_list(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "generators:" in out and "ddpm" in out and "classification" in out


def test_ddp_and_bf16_from_the_command_line(tmp_path):
    """Two CPU processes over gloo with bf16-mixed, launched the way users launch it."""
    recipe = tiny_recipe(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "lightning_medaug.cli", "fit", "--config", str(recipe),
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.precision", "bf16-mixed",
           "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "MEMBER: 2/2" in proc.stderr or "distributed_backend=gloo" in proc.stderr
    metrics = json.loads((run_folder(tmp_path) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["fit"]["global_step"] == 1.0  # 32 samples / (2 ranks x batch 16) = 1 step per epoch
    assert np.isfinite(metrics["fit"]["train/loss_epoch"])


# -- a mistake in what the user passed vs a bug ----------------------------------------------------
USER_MODULE = '''
"""A user's own data module, as a recipe names it by class_path."""
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class Scans(Dataset):
    def __init__(self, fault):
        self.fault = fault

    def __len__(self):
        return 8

    def __getitem__(self, index):
        image = torch.randn(1, 16, 16)
        if self.fault == "lookup":
            return image, {"normal": 0}["pneumonia"]
        if self.fault == "missing_label":
            return image, None
        if self.fault == "three_labels":
            return image, torch.tensor([0, 1, 1])
        return image, index % 2


class ScansData(L.LightningDataModule):
    def __init__(self, fault: str = "", scans: int = 8, num_workers: int = 0):
        super().__init__()
        if scans < 1:
            raise ValueError(f"scans must be at least 1, got {scans}")
        self.fault, self.num_workers = fault, num_workers

    def train_dataloader(self):
        return DataLoader(Scans(self.fault), batch_size=4, num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(Scans(""), batch_size=4)
'''


@pytest.fixture
def user_recipe(tmp_path, monkeypatch):
    """A recipe whose data module is the user's own class, in a module of the user's folder."""
    (tmp_path / "user_scans.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_scans", raising=False)
    return tiny_recipe(tmp_path, class_path="user_scans.ScansData")


def _fails_as_a_bug(capsys, argv, kind: str, where: str) -> str:
    """Exit 1, the full traceback, then one line naming the error, where it was raised, the issue
    tracker and the versions."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err[-5:]
    assert any(line.startswith("Traceback (most recent call last)") for line in err)
    last = err[-1]
    assert last.startswith(f"medaug: internal error: {kind} at "), last
    assert where in last, last
    assert "is a bug in lightning-medaug or a dependency" in last
    assert "https://github.com/lightning-medaug/lightning-medaug/issues" in last
    assert f"torch {torch.__version__}" in last and "lightning-medaug 0.1.0" in last
    return last


def test_a_users_own_value_error_is_a_mistake_exit_2(user_recipe, capsys):
    _fails_cleanly(capsys, ["fit", "--config", str(user_recipe), "--data.init_args.scans", "0"],
                   "scans must be at least 1, got 0")


def test_key_error_in_a_users_dataset_is_a_bug_exit_1(user_recipe, capsys):
    last = _fails_as_a_bug(capsys, ["fit", "--config", str(user_recipe), "--data.init_args.fault", "lookup"],
                           "KeyError", "user_scans.py:")
    assert "your own code" in last  # raised outside lightning-medaug: the line says where to look first


def test_key_error_in_a_dataloader_worker_is_judged_where_the_worker_raised_it(user_recipe, capsys):
    _fails_as_a_bug(capsys, ["fit", "--config", str(user_recipe), "--data.init_args.fault", "lookup",
                             "--data.init_args.num_workers", "1"], "KeyError", "user_scans.py:")


def test_malformed_batches_give_a_type_error_inside_torch_exit_1(user_recipe, capsys):
    # default_collate cannot batch a None label: a TypeError raised inside torch, not a one-line mistake
    last = _fails_as_a_bug(capsys, ["fit", "--config", str(user_recipe), "--data.init_args.fault", "missing_label"],
                           "TypeError", "collate.py:")
    assert "your own code" not in last


def test_value_error_raised_inside_a_dependency_is_a_bug_exit_1(user_recipe, capsys):
    # three labels per image for a two-label model: a ValueError raised inside torch, which our checks let through
    _fails_as_a_bug(capsys, ["fit", "--config", str(user_recipe), "--data.init_args.fault", "three_labels",
                             "--model.init_args.multilabel", "true"], "ValueError", "functional.py:")


def test_medaug_debug_lets_a_bug_propagate(user_recipe, monkeypatch):
    monkeypatch.setenv("MEDAUG_DEBUG", "1")
    with pytest.raises(KeyError, match="pneumonia"):
        main(["fit", "--config", str(user_recipe), "--data.init_args.fault", "lookup"])


def test_per_axis_image_sizes_match_whatever_their_container():
    """A recipe's list, a data module's tuple and an int name the same grid (and a real mismatch still fails)."""
    from lightning_medaug.cli import check_data_model_compatible
    from lightning_medaug.data import PhantomDataModule
    from lightning_medaug.registry import create_generator

    model = create_generator("cvae", spatial_dims=3, image_size=[8, 12, 16], num_classes=2, channels=[4, 8],
                             norm_num_groups=4, latent_channels=2)
    check_data_model_compatible(model, PhantomDataModule(spatial_dims=3, image_size=(8, 12, 16)))
    cube = create_generator("cvae", spatial_dims=3, image_size=8, num_classes=2, channels=[4, 8], norm_num_groups=4,
                            latent_channels=2)
    check_data_model_compatible(cube, PhantomDataModule(spatial_dims=3, image_size=(8, 8, 8)))
    with pytest.raises(ValueError, match="image_size"):
        check_data_model_compatible(model, PhantomDataModule(spatial_dims=3, image_size=(8, 12, 12)))


def test_a_failed_download_is_the_users_situation_not_a_bug(capsys, tmp_path):
    """Offline or refused: one line with where to put a hand-fetched copy, exit 2 (not the bug report)."""
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    line = _fails_cleanly(capsys, ["fit", "--config", str(recipes / "classify_pneumonia.yaml"),
                                   "--data.init_args.root", str(tmp_path), "--data.init_args.download", "true",
                                   "--data.init_args.url", "http://127.0.0.1:9/pneumoniamnist.npz"],
                          "could not download")
    assert "save it as" in line and not list(tmp_path.iterdir())
