"""score_bank / `medaug score`: k-fold proxies on the real training set, novelty, the keep rule, min_score."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.cli import main as cli_main
from lightning_medaug.data import PhantomDataModule
from lightning_medaug.metrics import dataset_fingerprint
from lightning_medaug.registry import create_generator
from lightning_medaug.selection import KeepRule, ProxyConfig, score_bank, stratified_folds

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = {"image_size": 16, "num_classes": 2, "num_train": 16, "num_val": 6, "num_test": 6, "batch_size": 8,
        "with_masks": False}
DATA = {"class_path": "lightning_medaug.data.PhantomDataModule", "init_args": ARGS}
PROXY = ProxyConfig(backbone="test_resnet", epochs=1, batch_size=8)
CPU = {"accelerator": "cpu"}


def _bank(root, num_classes: int = 2, spatial_dims: int = 2, size: int = 16):
    torch.manual_seed(0)
    model = create_generator("cvae" if num_classes else "vae", spatial_dims=spatial_dims, image_size=size,
                             num_classes=num_classes, channels=(8, 8), norm_num_groups=4, latent_channels=2)
    write_bank(model, root, 24, shard_size=12, batch_size=12, dtype="float32", progress=False)
    return root


@pytest.fixture(scope="module")
def bank_template(tmp_path_factory):
    """24 samples of an untrained 2-class cVAE; sample 0 is overwritten with training image 0 (a copy)."""
    root = _bank(tmp_path_factory.mktemp("bank") / "bank")
    images = np.load(shard_files(root, 0).images)
    dm = PhantomDataModule(**ARGS)
    dm.setup("fit")
    images[0] = dm.train_dataset[0]["image"].numpy()
    np.save(shard_files(root, 0).images, images)
    return root


@pytest.fixture
def bank(bank_template, tmp_path):
    return shutil.copytree(bank_template, tmp_path / "bank")


def read_scores(bank) -> list[dict[str, str]]:
    with open(bank / "scores.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_scores_and_the_rule_are_what_min_score_reads(bank):
    rule = KeepRule(min_novelty=1e-6, keep_fraction=0.5)
    record = score_bank(bank, DATA, rule, folds=2, proxy=PROXY, trainer_kwargs=CPU)
    rows = read_scores(bank)
    assert [int(r["id"]) for r in rows] == list(range(24))
    for r in rows:
        assert 0.0 <= float(r["confidence"]) <= 1.0
        assert all(math.isfinite(float(r[c])) for c in ("novelty", "diversity"))
        assert r["keep"] == ("1" if float(r["score"]) == 1.0 else "0")
    assert float(rows[0]["novelty"]) == 0.0 and rows[0]["keep"] == "0"  # the exact copy is dropped
    assert min(float(r["novelty"]) for r in rows[1:]) > 0
    kept = [int(r["id"]) for r in rows if r["keep"] == "1"]
    for label in (0, 1):  # half (rounded up) of each class's candidates, chosen by farthest point
        candidates = [r for r in rows if int(r["label"]) == label and float(r["novelty"]) >= 1e-6]
        assert sum(r["keep"] == "1" for r in candidates) == math.ceil(len(candidates) / 2)
    assert SyntheticBank(bank, min_score=1).ids.tolist() == kept == sorted(kept)
    assert record["kept"] == len(kept) and 0 < len(kept) < 24
    assert len(SyntheticBank(bank, min_score=0.5, score_column="confidence")) == sum(
        float(r["confidence"]) >= 0.5 for r in rows)

    saved = json.loads((bank / "selection.json").read_text(encoding="utf-8"))
    assert saved["rule"] == {"min_confidence": 0.0, "min_novelty": 1e-6, "keep_fraction": 0.5,
                             "min_diversity": 0.0, "per_class": True}
    dm = PhantomDataModule(**ARGS)
    dm.setup("fit")
    fingerprint = dataset_fingerprint(dm.train_dataset)
    assert saved["training_set"] == {"split": "train", "num_samples": 16, "sha256": fingerprint}
    assert saved["proxies"]["fold_sizes"] == [8, 8] and saved["proxies"]["config"]["backbone"] == "test_resnet"
    assert all(0 <= r["out_of_fold_acc"] <= 1 and r["trained_on"] == 8 for r in saved["proxies"]["records"])
    assert saved["proxies"]["majority_rate"] == np.bincount(dm.train_dataset.labels.numpy()).max() / 16
    assert saved["novelty"]["space"] == "pixel" and saved["library_version"]


class TrainingSplitOnly(PhantomDataModule):
    """Phantoms whose validation and test splits fail when read: the selection must not read them."""

    def val_dataloader(self):
        raise AssertionError("the selection read the validation split")

    def test_dataloader(self):
        raise AssertionError("the selection read the test split")

    @property
    def val_dataset(self):
        raise AssertionError("the selection read the validation split")

    @property
    def test_dataset(self):
        raise AssertionError("the selection read the test split")


def test_proxies_see_only_the_training_split_in_stratified_folds(bank):
    untrained = ProxyConfig(backbone="test_resnet", max_steps=1, lr=1e-12, batch_size=8)
    with pytest.warns(UserWarning, match="does not beat always answering the majority class"):
        record = score_bank(bank, TrainingSplitOnly(**ARGS), KeepRule(min_confidence=0.01), folds=2,
                            proxy=untrained, trainer_kwargs=CPU)
    assert record["training_set"]["num_samples"] == 16
    assert record["proxies"]["out_of_fold_acc"] <= record["proxies"]["majority_rate"]
    labels = np.array([0, 1] * 9 + [1] * 3)
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(np.flatnonzero(folds == k).size for k in range(3)) == [7, 7, 7]  # every image in one fold
    for k in range(3):
        assert np.bincount(labels[folds == k], minlength=2).min() >= 2  # both classes in every fold
    assert not np.array_equal(folds, stratified_folds(labels, 3, seed=1))
    assert np.array_equal(folds, stratified_folds(labels, 3, seed=0))


def test_same_seed_same_scores_and_another_rule_reuses_the_proxies(bank, capsys):
    score_bank(bank, DATA, KeepRule(min_confidence=0.3), folds=2, proxy=PROXY, trainer_kwargs=CPU)
    first = (bank / "scores.csv").read_bytes()
    saved = sorted((bank / "proxies").rglob("fold-*.npy"))
    votes = [p.read_bytes() for p in saved]
    shutil.rmtree(bank / "proxies")  # retrain from scratch, through the command line
    args = ["score", "--bank", str(bank), "--data", json.dumps(DATA), "--folds", "2", "--backbone", "test_resnet",
            "--epochs", "1", "--batch-size", "8", "--min-confidence", "0.3", "--device", "cpu", "--no-progress"]
    assert cli_main(args) == 0
    assert "kept" in capsys.readouterr().out
    assert (bank / "scores.csv").read_bytes() == first
    assert [p.read_bytes() for p in saved] == votes
    before = [p.stat().st_mtime_ns for p in saved]
    assert cli_main(args[:-3] + ["--keep-fraction", "0.25", "--min-diversity", "1.0", "--no-progress"]) == 0
    assert [p.stat().st_mtime_ns for p in saved] == before  # the folds were loaded, not trained again
    rows = read_scores(bank)
    assert [r["confidence"] for r in rows] == [r["confidence"] for r in csv.DictReader(first.decode().splitlines())]
    kept = [r for r in rows if r["keep"] == "1"]
    assert 0 < len(kept) <= sum(math.ceil(0.25 * sum(int(r["label"]) == c and float(r["confidence"]) >= 0.3
                                                    for r in rows)) for c in (0, 1))


def test_unlabelled_3d_bank_is_scored_on_novelty_and_diversity(tmp_path):
    bank = _bank(tmp_path / "bank3d", num_classes=0, spatial_dims=3, size=8)
    data = {"class_path": DATA["class_path"], "init_args": {**ARGS, "spatial_dims": 3, "image_size": 8}}
    record = score_bank(bank, data, KeepRule(keep_fraction=0.5), folds=2)
    rows = read_scores(bank)
    assert record["proxies"] is None and {r["confidence"] for r in rows} == {""}
    assert sum(r["keep"] == "1" for r in rows) == 12 == len(SyntheticBank(bank, min_score=1))
    with pytest.raises(ValueError, match="unlabelled .* min_confidence to 0"):
        score_bank(bank, data, KeepRule(min_confidence=0.5))


def test_bad_input_is_refused_in_one_line(bank, tmp_path, capsys):
    other = _bank(tmp_path / "three", num_classes=3)
    with pytest.raises(ValueError, match=r"labels \[2\] that are not classes of the data \(0..1\)"):
        score_bank(other, DATA)
    with pytest.raises(ValueError, match="shape"):
        score_bank(bank, {"class_path": DATA["class_path"], "init_args": {**ARGS, "image_size": 8}})
    with pytest.raises(ValueError, match="keep_fraction"):
        KeepRule(keep_fraction=0)
    with pytest.raises(ValueError, match="folds"):
        score_bank(bank, DATA, folds=1, proxy=PROXY)
    assert cli_main(["score", "--bank", str(bank), "--data", json.dumps(DATA), "--min-novelty", "-1"]) == 2
    err = capsys.readouterr().err
    assert "min_novelty is a distance" in err and len(err.strip().splitlines()) == 1
    assert not (bank / "scores.csv").exists()
