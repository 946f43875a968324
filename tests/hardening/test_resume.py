"""Crashes and resume, with real SIGKILLs.

* ``medaug fit`` killed after a checkpoint and resumed from it logs the same per-step losses, bit
  for bit on CPU, as an uninterrupted run, and ends with the same weights.
* ``medaug generate`` killed at several points and rerun ends with the complete bank: every id once,
  every shard intact and identical to an uninterrupted write.
* A diverging run stops with one line and keeps the last good checkpoint.

Killed runs are forked children (like DataLoader workers), which run the real command without
importing the stack again.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import read_manifest_columns, shard_complete
from lightning_medaug.cli import main
from lightning_medaug.generative.callbacks import FiniteLossGuard, NonFiniteLossError
from lightning_medaug.registry import create_generator

TINY_VAE = {"image_size": 16, "channels": [8, 8], "norm_num_groups": 4, "latent_channels": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Throttle(L.Callback):
    """Sleep after each batch, so that a kill lands somewhere inside the run (changes no result)."""

    def __init__(self, seconds: float = 0.1):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


def fit_recipe(root: Path, *extra_callbacks: dict, lr: float = 0.01, max_epochs: int = 4) -> Path:
    """A VAE on 24 phantoms, 3 steps per epoch, a checkpoint (and last.ckpt) at every epoch boundary."""
    recipe = {
        "seed_everything": 0,
        "model": {"class_path": "lightning_medaug.generative.vae.VAE", "init_args": {**TINY_VAE, "lr": lr}},
        "data": {"class_path": "lightning_medaug.data.PhantomDataModule",
                 "init_args": {"image_size": 16, "num_train": 24, "num_val": 8, "num_test": 8, "batch_size": 8}},
        "trainer": {"max_epochs": max_epochs, "accelerator": "cpu", "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root / "runs"), "name": "fit"}},
                    "callbacks": [
                        {"class_path": "lightning_medaug.generative.callbacks.FiniteLossGuard"},
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(root / "ckpts"), "save_last": True, "save_top_k": -1,
                                       "every_n_train_steps": 3, "filename": "{step}"}},
                        *extra_callbacks]},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def step_losses(run: Path) -> dict[int, str]:
    """``step -> train/loss_step`` as written in the CSV log (full repr: equal strings are equal floats)."""
    with open(run / "metrics.csv", newline="") as handle:
        return {int(row["step"]): row["train/loss_step"] for row in csv.DictReader(handle) if row["train/loss_step"]}


def _run_cli(argv: list[str]) -> None:
    torch.set_num_threads(1)
    sys.exit(main(argv))


def kill_when(proc: multiprocessing.Process, ready, delay: float = 0.0, timeout: float = 240) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` holds; fail if it ends by itself first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.is_alive(), f"the run ended before the kill (exit code {proc.exitcode})"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.is_alive(), f"the run ended before the kill (exit code {proc.exitcode})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL


def test_killed_fit_resumes_bit_identically(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir()
    broken.mkdir()
    assert main(["fit", "--config", str(fit_recipe(whole))]) == 0
    expected = step_losses(whole / "runs" / "fit" / "version_0")
    assert sorted(expected) == list(range(12))

    throttle = {"class_path": f"{__name__}.Throttle", "init_args": {"seconds": 0.15}}
    proc = multiprocessing.get_context("fork").Process(
        target=_run_cli, args=(["fit", "--config", str(fit_recipe(broken, throttle))],))
    proc.start()
    kill_when(proc, lambda: (broken / "ckpts" / "step=6.ckpt").exists())
    done = torch.load(broken / "ckpts" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]
    # last.ckpt is written just after step=6.ckpt, so the kill may land between the two
    assert done in (3, 6, 9)

    assert main(["fit", "--config", str(fit_recipe(broken)), "--ckpt_path", "last"]) == 0
    resumed = step_losses(broken / "runs" / "fit" / "version_1")
    assert sorted(resumed) == list(range(done, 12))
    assert resumed == {step: expected[step] for step in resumed}  # bit-identical losses
    final = [torch.load(root / "ckpts" / "last.ckpt", weights_only=True)["state_dict"] for root in (whole, broken)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    generators = [(root / "runs" / "fit" / v / "generator" / "model.safetensors").read_bytes()
                  for root, v in ((whole, "version_0"), (broken, "version_1"))]
    assert generators[0] == generators[1]


def test_diverging_fit_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    recipe = fit_recipe(tmp_path, lr=1e6)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("every_n_train_steps: 3", "every_n_train_steps: 1"))
    assert main(["fit", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medaug: error: loss became NaN or infinite") and "lower the learning rate" in err[-1]
    assert not any("Traceback" in line for line in err)
    saved = sorted((tmp_path / "ckpts").glob("step=*.ckpt"))
    last = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True, map_location="cpu")
    assert saved and last["global_step"] == max(int(p.stem.split("=")[1]) for p in saved)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "runs" / "fit" / "version_0" / "generator").exists()  # a broken model is not exported


class InfiniteGradient(L.LightningModule):
    """Finite loss, infinite gradient at the third step (d sqrt(u)/du at u = 0): the step breaks the weights."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch["x"]).pow(2).mean()
        return loss + (self.w - self.w.detach()).sqrt().sum() if batch_idx == 2 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_guard_keeps_checkpoints_finite_when_only_the_gradient_overflows(tmp_path):
    batches = [{"x": torch.ones(2)} for _ in range(5)]
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FiniteLossGuard(), checkpoints])
    with pytest.raises(NonFiniteLossError, match=r"\(weights after the optimizer step\) at step 3"):
        trainer.fit(InfiniteGradient(), train_dataloaders=DataLoader(batches, batch_size=None))
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=1.ckpt", "step=2.ckpt"]
    for path in tmp_path.glob("*.ckpt"):
        assert torch.isfinite(torch.load(path, weights_only=True)["state_dict"]["w"]).all()


# -- medaug generate -----------------------------------------------------------------------------------
def test_generate_killed_at_five_points_ends_with_the_complete_bank(tmp_path):
    torch.manual_seed(0)
    model = create_generator("cvae", num_classes=2, **{**TINY_VAE, "channels": (8, 8)})
    folder = model.save_pretrained(tmp_path / "model")
    bank, shards, size = tmp_path / "bank", 20, 4
    args = ["generate", "--model", str(folder), "--num-samples", str(shards * size), "--shard-size", str(size),
            "--batch-size", "1", "--out", str(bank), "--no-progress"]
    rng = random.Random(0)

    def complete() -> int:
        return sum(shard_complete(bank, k, size) for k in range(shards))

    history = []
    for round_ in range(5):  # kill points: during start-up, then 1, 2, ... shards further, at a random moment
        proc = multiprocessing.get_context("fork").Process(target=_run_cli, args=(args,))
        start = complete()
        proc.start()
        ready = (lambda: True) if round_ == 0 else (lambda start=start: complete() > start)
        kill_when(proc, ready, delay=rng.uniform(0.0, 0.01))
        history.append(complete())
    assert history[-1] < shards and not (bank / "manifest.csv").exists()
    assert history == sorted(history)  # no kill ever undid a complete shard

    assert main(args) == 0
    write_bank(folder, tmp_path / "reference", shards * size, shard_size=size, batch_size=1, progress=False)
    got = {p.name: p.read_bytes() for p in sorted((bank / "shards").iterdir())}
    want = {p.name: p.read_bytes() for p in sorted((tmp_path / "reference" / "shards").iterdir())}
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want if k.endswith(".npy"))
    ids = read_manifest_columns(bank / "manifest.csv", ("id",))["id"]
    assert ids.tolist() == list(range(shards * size))  # no duplicate, no gap
    assert not list(bank.rglob("*.tmp"))
    assert SyntheticBank(bank).verify_hashes() == shards
    assert np.array_equal(SyntheticBank(bank).labels, SyntheticBank(tmp_path / "reference").labels)
