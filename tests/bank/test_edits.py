"""`medaug generate --edit-from`: banks of diffusion edits of real training images, with provenance."""

from __future__ import annotations

import csv
import hashlib
import json

import lightning as L
import pytest
import torch
import yaml

from lightning_medaug.bank import SyntheticBank
from lightning_medaug.bank.edits import load_training_set
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.cli import main as cli_main
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.generative.diffusion import DDPM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = {"class_path": "lightning_medaug.data.PhantomDataModule",
        "init_args": {"image_size": 8, "num_classes": 2, "num_train": 10, "num_val": 4, "num_test": 4,
                      "batch_size": 4, "with_masks": False}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = DDPM(image_size=8, num_classes=2, channels=(8, 16), norm_num_groups=8, num_inference_steps=4)
    L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, PhantomDataModule(**DATA["init_args"]))
    return model.save_pretrained(tmp_path_factory.mktemp("ddpm") / "model")


@pytest.fixture
def recipe(tmp_path):
    """A downstream recipe whose data section (with training augmentation, which edits ignore) names the real data."""
    data = {"class_path": DATA["class_path"], "init_args": {
        **DATA["init_args"], "train_transforms": {"class_path": "lightning_medaug.data.ClassicAugmentation"}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "x"}, "data": data}), encoding="utf-8")
    return path


def manifest_rows(bank) -> list[dict[str, str]]:
    with open(bank / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_counterfactual_edit_bank_records_its_parents(model_dir, recipe, tmp_path, capsys):
    bank = tmp_path / "edits"
    args = ["generate", "--model", str(model_dir), "--edit-from", str(recipe), "--strength", "0.5",
            "--target-labels", "0:1,1:0", "--shard-size", "4", "--batch-size", "3", "--out", str(bank),
            "--no-progress"]
    assert cli_main(args) == 0
    assert "wrote 3 of 3 shards" in capsys.readouterr().out
    dataset, section = load_training_set(recipe)
    assert "train_transforms" not in section["init_args"]
    rows = manifest_rows(bank)
    assert [int(r["parent_index"]) for r in rows] == list(range(10))
    for i, row in enumerate(rows):
        sample = dataset[i]
        assert row["parent_sha256"] == hashlib.sha256(sample["image"].float().numpy().tobytes()).hexdigest()
        assert int(row["source_label"]) == int(sample["label"]) and int(row["label"]) == 1 - int(sample["label"])
        assert float(row["strength"]) == 0.5
        soft = json.loads(row["soft_label"])
        assert soft == [0.5, 0.5]
    reader = SyntheticBank(bank)
    assert len(reader) == 10 and reader[0]["image"].shape == (1, 8, 8)
    # every parent was edited (beyond float16 rounding), each into its own image
    edits = torch.stack([reader[i]["image"] for i in range(10)])
    parents = torch.stack([dataset[i]["image"] for i in range(10)])
    assert ((edits - parents).flatten(1).abs().amax(1) > 0.01).all()
    assert len(torch.unique(edits.flatten(1), dim=0)) == 10
    assert reader.info["settings"]["edit"]["strength"] == 0.5
    # resumable: a lost shard is drawn again, bit-identically; other settings are another bank
    before = shard_files(bank, 1).images.read_bytes()
    shard_files(bank, 1).manifest.unlink()
    assert cli_main(args) == 0
    assert "wrote 1 of 3 shards" in capsys.readouterr().out
    assert shard_files(bank, 1).images.read_bytes() == before
    assert cli_main(args) == 0 and "is complete" in capsys.readouterr().out
    assert cli_main([*args[:6], "0.75", *args[7:]]) == 2
    assert "already holds a bank written with other settings" in capsys.readouterr().err


def test_same_class_edits_cycle_the_training_set(model_dir, tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(DATA), encoding="utf-8")  # a data config, not a whole recipe
    bank = tmp_path / "edits"
    assert cli_main(["generate", "--model", str(model_dir), "--edit-from", str(data), "--strength", "0.25",
                     "--num-samples", "20", "--steps", "8", "--out", str(bank), "--no-progress"]) == 0
    rows = manifest_rows(bank)
    assert [int(r["parent_index"]) for r in rows] == list(range(10)) * 2
    assert all(r["label"] == r["source_label"] for r in rows)
    assert all(json.loads(r["soft_label"])[int(r["label"])] == 1.0 for r in rows)
    assert {r["steps"] for r in rows} == {"8"}
    reader = SyntheticBank(bank)
    assert len(reader) == 20
    # the second edit of an image is another draw, not a copy of the first
    assert not torch.equal(reader[3]["image"], reader[13]["image"])


def test_edit_options_are_checked(model_dir, recipe, tmp_path, capsys):
    base = ["generate", "--model", str(model_dir), "--out", str(tmp_path / "bank"), "--no-progress"]
    cases = [
        (["--num-samples", "4", "--strength", "0.5"], "only apply to edits of real images"),
        (["--edit-from", str(recipe)], "needs --strength"),
        (["--edit-from", str(recipe), "--strength", "1.5"], "strength must be in (0, 1]"),
        (["--edit-from", str(recipe), "--strength", "0.5", "--labels", "balanced"], "do not apply with --edit-from"),
        (["--edit-from", str(recipe), "--strength", "0.5", "--target-labels", "0:1"], "must map every class"),
        (["--edit-from", str(tmp_path / "missing.yaml"), "--strength", "0.5"], "not found"),
    ]
    for extra, message in cases:
        assert cli_main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bank").exists()
