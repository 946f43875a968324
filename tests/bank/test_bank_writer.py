"""write_bank: shards, manifest, label plans, determinism and resuming, with real tiny generators."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from lightning_medaug.bank import LabelPlan, SyntheticBank, label_plan, shard_seed, write_bank
from lightning_medaug.bank.batch_size import default_batch_size
from lightning_medaug.bank.manifest import COLUMNS, read_bank_info, shard_files
from lightning_medaug.registry import create_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cvae(spatial_dims: int = 2, num_classes: int = 3):
    torch.manual_seed(0)
    return create_generator("cvae", spatial_dims=spatial_dims, image_size=16 if spatial_dims == 2 else 8,
                            num_classes=num_classes, channels=(8, 8), norm_num_groups=4, latent_channels=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_cvae().save_pretrained(tmp_path_factory.mktemp("cvae") / "model")


def bank_bytes(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.npy"))}


def read_csv(root) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_bank_layout_manifest_and_plan(model_dir, tmp_path):
    summary = write_bank(model_dir, tmp_path / "bank", 40, shard_size=16, batch_size=8, progress=False)
    root = tmp_path / "bank"
    assert (summary.num_shards, summary.written) == (3, 3)
    for k, n in enumerate((16, 16, 8)):
        images = np.load(shard_files(root, k).images, mmap_mode="r")
        assert images.shape == (n, 1, 16, 16) and images.dtype == np.float16
        assert np.abs(images).max() <= 1.0 and images.std() > 0
    rows = read_csv(root)
    assert len(rows) == 40 and list(rows[0]) == list(COLUMNS)
    assert [int(r["id"]) for r in rows] == list(range(40))
    assert [int(r["label"]) for r in rows] == [i % 3 for i in range(40)]  # balanced: round-robin
    assert [(int(r["shard"]), int(r["index"])) for r in rows] == [(i // 16, i % 16) for i in range(40)]
    seeds = {int(r["shard"]): int(r["seed"]) for r in rows}
    assert len(set(seeds.values())) == 3 and seeds == {k: shard_seed(0, k) for k in range(3)}
    weights_sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert {r["checkpoint_sha256"] for r in rows} == {weights_sha}
    assert {r["generator"] for r in rows} == {"cvae"}
    assert {r["generator_class"] for r in rows} == {"lightning_medaug.generative.vae.ConditionalVAE"}
    assert all(r["time"].endswith("+00:00") and r["library_version"] for r in rows)
    written = (root / "manifest.csv").read_text(encoding="utf-8") + (root / "bank.json").read_text(encoding="utf-8")
    assert str(tmp_path) not in written
    info = json.loads((root / "bank.json").read_text(encoding="utf-8"))["settings"]
    assert info["label_plan"]["counts"] == [14, 13, 13] and info["image_shape"] == [1, 16, 16]
    assert not list(root.rglob("*.tmp"))


def test_in_memory_model_hash_matches_saved_checkpoint(tmp_path):
    model = tiny_cvae()
    write_bank(model, tmp_path / "bank", 4, shard_size=4, batch_size=4, progress=False)
    folder = model.save_pretrained(tmp_path / "model")
    expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert read_csv(tmp_path / "bank")[0]["checkpoint_sha256"] == expected


def test_same_arguments_give_identical_shards(model_dir, tmp_path):
    kwargs = dict(num_samples=20, shard_size=8, batch_size=4, progress=False)
    write_bank(model_dir, tmp_path / "a", **kwargs)
    write_bank(model_dir, tmp_path / "b", **kwargs)
    write_bank(model_dir, tmp_path / "c", seed=1, **kwargs)
    a, b, c = (bank_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 3 and a == b
    assert all(a[name] != c[name] for name in a)


def test_rerun_of_complete_bank_changes_nothing(model_dir, tmp_path):
    kwargs = dict(num_samples=12, shard_size=8, batch_size=8, progress=False)
    write_bank(model_dir, tmp_path / "bank", **kwargs)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "bank").rglob("*")}
    summary = write_bank(model_dir, tmp_path / "bank", **kwargs)
    assert summary.was_complete and summary.written == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bank").rglob("*")} == stamps


def test_other_arguments_into_existing_bank_raise(model_dir, tmp_path):
    write_bank(model_dir, tmp_path / "bank", 12, shard_size=8, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="other settings.*seed: 0 -> 3"):
        write_bank(model_dir, tmp_path / "bank", 12, shard_size=8, batch_size=8, seed=3, progress=False)
    with pytest.raises(ValueError, match="num_samples: 12 -> 13"):
        write_bank(model_dir, tmp_path / "bank", 13, shard_size=8, batch_size=8, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_bank(model_dir, tmp_path / "other", 4, progress=False)


def test_interrupted_shard_is_rewritten_identically(model_dir, tmp_path):
    """A crash between a shard's arrays and its manifest leaves orphans, a lost file leaves a gap:
    the rerun rewrites exactly those shards."""
    kwargs = dict(num_samples=24, shard_size=8, batch_size=4, progress=False)
    write_bank(model_dir, tmp_path / "ref", **kwargs)
    write_bank(model_dir, tmp_path / "bank", **kwargs)
    root = tmp_path / "bank"
    files = shard_files(root, 1)
    files.manifest.unlink()
    (root / "manifest.csv").unlink()
    files.images.write_bytes(b"half-written")
    files.images.with_name(files.images.name + ".tmp").write_bytes(b"junk")
    shard_files(root, 2).images.unlink()  # a lost array: its shard counts as incomplete
    stamp = shard_files(root, 0).images.stat().st_mtime_ns
    summary = write_bank(model_dir, root, **kwargs)
    assert summary.written == 2
    assert shard_files(root, 0).images.stat().st_mtime_ns == stamp  # complete shards are skipped
    assert bank_bytes(root) == bank_bytes(tmp_path / "ref")
    assert not list(root.rglob("*.tmp"))
    assert [int(r["id"]) for r in read_csv(root)] == list(range(24))


def test_label_plans():
    assert label_plan(None, 7, 3).labels().tolist() == [0, 1, 2, 0, 1, 2, 0]
    prop = label_plan("proportional", 100, 2, proportions="0:0.26,1:0.74")
    assert prop.counts == (26, 74) and np.bincount(prop.labels()).tolist() == [26, 74]
    first = prop.labels()[:20]  # interleaved: any prefix holds close to the plan's mix
    assert abs(int((first == 0).sum()) - 5.2) <= 1
    assert label_plan("proportional", 10, 3, proportions={0: 1, 1: 1, 2: 1}).counts == (4, 3, 3)
    explicit = label_plan("0:5,2:3", None, 3)
    assert explicit.counts == (5, 0, 3) and np.bincount(explicit.labels()).tolist() == [5, 0, 3]
    assert LabelPlan.from_dict(explicit.to_dict()) == explicit
    assert label_plan(None, 5, 0).labels().tolist() == [-1] * 5
    for bad in (lambda: label_plan("0:5,1:5", 11, 2), lambda: label_plan("0:5,4:5", None, 2),
                lambda: label_plan("proportional", 10, 2), lambda: label_plan("zero", 10, 2),
                lambda: label_plan("balanced", 10, 0), lambda: label_plan(None, 0, 2)):
        with pytest.raises(ValueError):
            bad()


def test_explicit_plan_and_storage_dtypes(model_dir, tmp_path):
    write_bank(model_dir, tmp_path / "f32", 10, labels={0: 6, 2: 4}, shard_size=8, batch_size=8, dtype="float32",
               progress=False)
    write_bank(model_dir, tmp_path / "u8", 10, labels="0:6,2:4", shard_size=8, batch_size=8, dtype="uint8",
               progress=False)
    exact, coarse = SyntheticBank(tmp_path / "f32"), SyntheticBank(tmp_path / "u8")
    assert np.bincount(exact.labels, minlength=3).tolist() == [6, 0, 4]
    assert np.load(shard_files(tmp_path / "u8", 0).images).dtype == np.uint8
    for i in range(10):
        assert torch.allclose(coarse[i]["image"], exact[i]["image"], atol=1 / 127.5 + 1e-6)


@pytest.mark.parametrize("image_shape, expected", [
    ((1, 28, 28), 256), ((3, 128, 128), 256), ((1, 256, 256), 64), ((1, 4096, 4096), 1),
    ((1, 32, 32, 32), 128), ((1, 64, 64, 64), 16), ((1, 128, 128, 128), 2), ((1, 512, 512, 512), 1),
])
def test_default_batch_size_follows_the_image_size(image_shape, expected):
    assert default_batch_size(image_shape) == expected


def test_default_batch_size_is_recorded_and_kept_on_resume(model_dir, tmp_path):
    """Without ``batch_size`` a new bank records the size-based default and a resumed bank keeps
    its own batch size (the shards stay identical), so changing the default never strands a bank."""
    root = tmp_path / "bank"
    write_bank(model_dir, root, 12, shard_size=8, progress=False)
    assert read_bank_info(root)["settings"]["batch_size"] == 256  # 16x16 images
    resumed = tmp_path / "resumed"
    write_bank(model_dir, resumed, 24, shard_size=8, batch_size=4, progress=False)
    reference = bank_bytes(resumed)
    shard_files(resumed, 2).images.unlink()
    summary = write_bank(model_dir, resumed, 24, shard_size=8, progress=False)  # no batch_size: the bank's 4
    assert summary.written == 1 and bank_bytes(resumed) == reference
    with pytest.raises(ValueError, match="batch_size: 4 -> 8"):
        write_bank(model_dir, resumed, 24, shard_size=8, batch_size=8, progress=False)


def test_3d_bank(tmp_path):
    write_bank(tiny_cvae(3, num_classes=2), tmp_path / "bank", 6, shard_size=4, batch_size=4, progress=False)
    assert np.load(shard_files(tmp_path / "bank", 0).images).shape == (4, 1, 8, 8, 8)
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.image_shape == (1, 8, 8, 8) and bank.spatial_dims == 3
    item = bank[5]
    assert item["image"].shape == (1, 8, 8, 8) and item["image"].dtype == torch.float32 and item["label"] == 1


def test_mask_conditional_bank_cycles_masks(tmp_path):
    model = create_generator("pix2pix", image_size=16, generator_channels=8, generator_levels=2,
                             discriminator_channels=8)
    masks = torch.zeros(3, 1, 16, 16)
    for i in range(3):
        masks[i, :, 2 * i:2 * i + 6, 3:9] = 1
    write_bank(model, tmp_path / "bank", 7, masks=masks, mask_names=["a.png", "b.png", "c.png"], shard_size=4,
               batch_size=2, progress=False)
    bank = SyntheticBank(tmp_path / "bank")
    assert bank.has_masks and bank.num_classes == 0 and "label" not in bank[0]
    for i in range(7):
        assert torch.equal(bank[i]["mask"], masks[i % 3])
    assert [r["mask_source"] for r in read_csv(tmp_path / "bank")] == ["a.png", "b.png", "c.png"] * 2 + ["a.png"]
    with pytest.raises(ValueError, match="mask-conditional"):
        write_bank(model, tmp_path / "nomask", 4, progress=False)
    with pytest.raises(ValueError, match="relative"):
        write_bank(model, tmp_path / "abs", 4, masks=masks, mask_names=["/x/a.png", "b", "c"], progress=False)


def test_argument_errors(model_dir, tmp_path):
    for kwargs in ({"shard_size": 0}, {"batch_size": 0}, {"batch_size": 2.5}, {"dtype": "int16"}, {"seed": -1},
                   {"sample_kwargs": {"sampler": "ddim"}},
                   {"masks": torch.ones(2, 1, 16, 16)}, {"labels": "0:4,7:1"}):
        with pytest.raises(ValueError):
            write_bank(model_dir, tmp_path / "bank", 5, progress=False, **kwargs)
    with pytest.raises(FileNotFoundError):
        write_bank(tmp_path / "missing", tmp_path / "bank", 5, progress=False)
