"""SyntheticBank: reading, filtering, verification of damaged banks, DataLoader workers."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_medaug.bank import SyntheticBank, write_bank
from lightning_medaug.bank.manifest import shard_files
from lightning_medaug.registry import create_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def bank_dir(tmp_path):
    """40 samples of a 2-class tiny cVAE in shards of 16 (16 + 16 + 8)."""
    torch.manual_seed(0)
    model = create_generator("cvae", image_size=16, num_classes=2, channels=(8, 8), norm_num_groups=4,
                             latent_channels=2)
    write_bank(model, tmp_path / "bank", 40, shard_size=16, batch_size=16, progress=False)
    return tmp_path / "bank"


def test_items_follow_the_batch_convention(bank_dir):
    bank = SyntheticBank(bank_dir)
    assert len(bank) == 40 and bank.image_shape == (1, 16, 16) and bank.num_classes == 2 and not bank.has_masks
    item = bank[17]
    assert set(item) == {"image", "label"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 16, 16)
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0 and int(item["label"]) == 1
    stored = np.load(shard_files(bank_dir, 1).images)[1].astype(np.float32)
    assert np.array_equal(item["image"].numpy(), stored)
    assert bank.labels.tolist() == [i % 2 for i in range(40)] and bank.class_counts().tolist() == [20, 20]
    assert bank.info["settings"]["generator"] == "cvae"
    assert bank.verify_hashes() == 3


def test_filter_by_label_and_score(bank_dir):
    only_ones = SyntheticBank(bank_dir, labels=[1])
    assert len(only_ones) == 20 and set(only_ones.labels.tolist()) == {1}
    assert all(int(only_ones[i]["label"]) == 1 for i in range(0, 20, 5))
    with pytest.raises(ValueError, match="min_score needs scores"):
        SyntheticBank(bank_dir, min_score=0.5)
    with open(bank_dir / "scores.csv", "w", newline="") as handle:  # as the evaluation code would add it
        writer = csv.writer(handle)
        writer.writerow(["id", "score"])
        writer.writerows([i, i / 40] for i in range(0, 40, 2))  # odd ids have no score
    good = SyntheticBank(bank_dir, min_score=0.5)
    assert good.ids.tolist() == list(range(20, 40, 2)) and np.all(good.scores >= 0.5)
    assert len(SyntheticBank(bank_dir, labels=[0], min_score=0.9)) == 2
    with pytest.raises(ValueError, match="no sample"):
        SyntheticBank(bank_dir, labels=[1], min_score=0.0)
    with pytest.raises(ValueError, match="not classes"):
        SyntheticBank(bank_dir, labels=[5])


def test_score_column_in_manifest(bank_dir):
    path = bank_dir / "manifest.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "quality"])
        writer.writeheader()
        writer.writerows({**row, "quality": int(row["id"]) % 4} for row in rows)
    bank = SyntheticBank(bank_dir, min_score=3, score_column="quality")
    assert bank.ids.tolist() == list(range(3, 40, 4)) and "score" in bank.manifest


@pytest.mark.parametrize("damage, message", [
    ("delete_shard", "shard-000001.images.npy is missing"),
    ("truncate_manifest", "lists 4 rows of shard 2"),
    ("shape_mismatch", r"holds float16 \(8, 1, 8, 8\)"),
    ("extra_shard", "shard 7 that the bank does not list"),
    ("no_manifest", "incomplete"),
    ("edited_ids", "ids that do not match"),
])
def test_damaged_bank_raises(bank_dir, damage, message):
    manifest = bank_dir / "manifest.csv"
    if damage == "delete_shard":
        shard_files(bank_dir, 1).images.unlink()
    elif damage == "truncate_manifest":
        manifest.write_text("".join(manifest.read_text(encoding="utf-8").splitlines(keepends=True)[:-4]))
    elif damage == "shape_mismatch":
        np.save(shard_files(bank_dir, 2).images, np.zeros((8, 1, 8, 8), dtype=np.float16))
    elif damage == "extra_shard":
        np.save(shard_files(bank_dir, 7).images, np.zeros((8, 1, 16, 16), dtype=np.float16))
    elif damage == "no_manifest":
        manifest.unlink()
    elif damage == "edited_ids":
        lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[3] = "1" + lines[3][1:]  # id 2 -> 1
        manifest.write_text("".join(lines))
    with pytest.raises(ValueError, match=message):
        SyntheticBank(bank_dir)


def test_verify_hashes_detects_changed_bytes(bank_dir):
    path = shard_files(bank_dir, 0).images
    array = np.load(path)
    array[3] = 0
    np.save(path, array)
    bank = SyntheticBank(bank_dir)  # shapes still agree
    with pytest.raises(ValueError, match="shard 0 .* does not match its SHA-256"):
        bank.verify_hashes()


def test_not_a_bank(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a synthetic bank"):
        SyntheticBank(tmp_path)


def test_lazy_maps_pickle_small_and_work_in_workers(bank_dir):
    bank = SyntheticBank(bank_dir)
    bank[0], bank[39]  # opens two shards here
    assert len(pickle.dumps(bank)) < 20_000  # index arrays only, no image data
    loader = DataLoader(bank, batch_size=8, num_workers=1)
    batches = list(loader)
    assert len(batches) == 5 and batches[0]["image"].shape == (8, 1, 16, 16)
    assert torch.equal(torch.cat([b["label"] for b in batches]), torch.as_tensor(bank.labels))
    assert torch.equal(batches[4]["image"][-1], bank[39]["image"])
