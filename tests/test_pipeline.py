"""The command-line pipeline a user runs: fit a generator, write a bank, train a classifier mixed."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from lightning_medaug.bank import SyntheticBank
from lightning_medaug.cli import main
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.tasks import ClassificationTask

PHANTOMS = {"class_path": "lightning_medaug.data.PhantomDataModule",
            "init_args": {"image_size": 16, "num_train": 32, "num_val": 16, "num_test": 16, "batch_size": 16,
                          "with_masks": False}}


def _recipe(tmp_path: Path, name: str, model: dict, data: dict, **trainer) -> Path:
    recipe = {"seed_everything": 0, "model": model, "data": data,
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                          "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                     "init_args": {"save_dir": str(tmp_path / "runs"), "name": name}}, **trainer}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_fit_generate_mix(tmp_path, capsys):
    generator_recipe = _recipe(tmp_path, "cvae", {
        "class_path": "lightning_medaug.generative.vae.ConditionalVAE",
        "init_args": {"image_size": 16, "num_classes": 2, "channels": [8, 16], "norm_num_groups": 4}}, PHANTOMS)
    assert main(["fit", "--config", str(generator_recipe)]) == 0
    generator = tmp_path / "runs" / "cvae" / "version_0" / "generator"
    assert (generator / "model.safetensors").is_file() and (generator / "config.json").is_file()

    bank = tmp_path / "bank"
    assert main(["generate", "--model", str(generator), "--num-samples", "40", "--labels", "balanced",
                 "--shard-size", "16", "--out", str(bank), "--no-progress"]) == 0
    assert len(SyntheticBank(bank)) == 40

    mixed = {"class_path": "lightning_medaug.mixing.SyntheticMixDataModule",
             "init_args": {"datamodule": PHANTOMS, "bank": str(bank), "ratio": 0.5}}
    classifier = {"class_path": "lightning_medaug.tasks.ClassificationTask",
                  "init_args": {"backbone": "test_resnet", "num_classes": 2}}
    mix_recipe = _recipe(tmp_path, "mix", classifier, mixed)
    assert main(["fit", "--config", str(mix_recipe)]) == 0
    run = tmp_path / "runs" / "mix" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    # 32 real + 32 synthetic samples in batches of 16: four steps in the epoch.
    assert metrics["fit"]["global_step"] == 4.0
    # validation scores the trained classifier on the real validation images only
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    task = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    real = PhantomDataModule(**PHANTOMS["init_args"])
    real.setup("validate")
    batches = list(real.val_dataloader())
    with torch.no_grad():
        probs = torch.cat([task.probabilities(task(batch["image"])) for batch in batches])
    labels = torch.cat([batch["label"] for batch in batches])
    expected = float(binary_auroc(probs[:, 1], labels))
    assert len(labels) == 16 and metrics["fit"]["val/auc"] == pytest.approx(expected, abs=1e-6)

    # A bank for another class count cannot be mixed into this data.
    capsys.readouterr()
    assert main(["fit", "--config", str(mix_recipe), "--data.init_args.datamodule.init_args.num_classes", "1"]) == 2
    assert "classes" in capsys.readouterr().err
