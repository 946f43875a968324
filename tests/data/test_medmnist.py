"""MedMNISTDataModule: the shipped PneumoniaMNIST, other layouts, subsets, downloads and bad files."""

import functools
import hashlib
import http.server
import logging
import threading
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lightning_medaug.data.medmnist import MedMNISTDataModule, medmnist_info, shipped_datasets_dir
from lightning_medaug.downloads import DownloadError

SHIPPED = shipped_datasets_dir() / "pneumoniamnist.npz"


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MEDAUG_DATA", raising=False)


def _write_npz(path: Path, image_shape: tuple, num_classes: int, n: int = 6, multi_label: bool = False,
               dtype=np.uint8, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        if np.issubdtype(dtype, np.floating):
            arrays[f"{split}_images"] = rng.random((n, *image_shape)).astype(dtype)
        else:
            arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        shape = (n, num_classes) if multi_label else (n, 1)
        arrays[f"{split}_labels"] = rng.integers(0, 2 if multi_label else num_classes, shape, dtype=np.uint8)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _load(root: Path, name: str, **kwargs) -> MedMNISTDataModule:
    dm = MedMNISTDataModule(name=name, root=str(root), **kwargs)
    with pytest.warns(UserWarning, match="not the official MD5"):
        dm.setup()
    return dm


def test_shipped_pneumoniamnist_loads_as_a_documented_copy(caplog):
    dm = MedMNISTDataModule(batch_size=64)
    assert dm.path == SHIPPED
    # Its MD5 is not the official one for a documented reason: an INFO line, no warning.
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="lightning_medaug.data.medmnist"):
        warnings.simplefilter("error")
        dm.setup()
    assert "238a40f8f78b9a61dfdd21e86aac35f9, not the official 28209eda62fecd6e6a2d98b1501bb15f" in caplog.text
    assert "train split in another order" in caplog.text
    assert dm.splits == {"train": 4708, "val": 524, "test": 624}
    assert (dm.spatial_dims, dm.in_channels, dm.image_size, dm.num_classes) == (2, 1, 28, 2)
    assert dm.task == "binary-class" and dm.class_names == ("normal", "pneumonia")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (64, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (64,)
    for split in ("train", "val", "test"):
        ds = dm.datasets[split]
        assert set(ds.labels.unique().tolist()) == {0, 1}
    images = dm.train_dataset.images.float() / 127.5 - 1
    assert images.min() == -1.0 and images.max() == 1.0
    assert dm.dataset_hash == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


def test_documented_md5_is_per_file_name(tmp_path):
    # The shipped bytes saved as another set's file are not a documented copy of that set.
    (tmp_path / "breastmnist.npz").write_bytes(SHIPPED.read_bytes())
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path))
    with pytest.warns(UserWarning, match="238a40f8f78b9a61dfdd21e86aac35f9, not the official MD5"):
        dm.setup()
    assert dm.splits["train"] == 4708  # same layout: it loads, with the warning


def test_trainer_fits_on_medmnist():
    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(28 * 28, 2)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch["image"].flatten(1)), batch["label"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = MedMNISTDataModule(subset=8, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=3)
    trainer.fit(Probe(), datamodule=dm)
    assert trainer.global_step == 3 and dm.splits["train"] == 16


def test_stratified_fraction_subset():
    full = MedMNISTDataModule()
    full.setup()
    labels = full.train_dataset.labels.numpy()
    dms = {}
    for key, seed, frac in (("a", 0, 0.1), ("b", 0, 0.1), ("c", 1, 0.1), ("small", 0, 0.05)):
        dms[key] = MedMNISTDataModule(subset=frac, subset_seed=seed)
        dms[key].setup("fit")
    a = dms["a"]
    counts = np.bincount(a.train_dataset.labels.numpy(), minlength=2)
    expected = 0.1 * np.bincount(labels, minlength=2)
    assert np.all(np.abs(counts - expected) <= 1)
    assert np.array_equal(a.subset_indices, dms["b"].subset_indices)
    assert not np.array_equal(a.subset_indices, dms["c"].subset_indices)
    assert set(dms["small"].subset_indices) <= set(a.subset_indices)  # nested subsets
    # Drawn from train only, image for image; val is the full official split.
    assert torch.equal(a.train_dataset.images, full.train_dataset.images[torch.from_numpy(a.subset_indices)])
    assert a.splits == {"train": int(counts.sum()), "val": 524}


def test_per_class_subset_and_bad_subsets():
    dm = MedMNISTDataModule(subset=5, subset_seed=3)
    dm.setup("fit")
    assert np.bincount(dm.train_dataset.labels.numpy()).tolist() == [5, 5]
    for bad in (0, -2, 0.0, 1.5, "10%", True):
        with pytest.raises(ValueError, match="subset"):
            MedMNISTDataModule(subset=bad)
    with pytest.raises(ValueError, match="multi-label"):
        MedMNISTDataModule(name="chestmnist", subset=3)


def test_env_root_and_too_few_per_class(tmp_path, monkeypatch):
    _write_npz(tmp_path / "breastmnist.npz", (28, 28), 2, train_labels=np.array([[0], [0], [0], [0], [0], [1]]))
    monkeypatch.setenv("MEDAUG_DATA", str(tmp_path))
    dm = MedMNISTDataModule(name="breastmnist", subset=2)
    assert dm.path == tmp_path / "breastmnist.npz"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="class 1 has only 1 training samples"):
        dm.setup("fit")


def test_metadata_and_argument_errors():
    info = medmnist_info("organmnist3d", 64)
    assert info.filename == "organmnist3d_64.npz" and info.spatial_dims == 3 and "zenodo" in info.url
    assert medmnist_info("pathmnist", 224).in_channels == 3
    with pytest.raises(ValueError, match="available sizes: \\[28, 64\\]"):
        medmnist_info("nodulemnist3d", 128)
    with pytest.raises(ValueError, match="pneumoniamnist"):
        MedMNISTDataModule(name="pneumoniamnst")
    with pytest.raises(ValueError, match="batch_size"):
        MedMNISTDataModule(batch_size=0)


def test_3d_rgb_and_multilabel_layouts(tmp_path):
    _write_npz(tmp_path / "organmnist3d.npz", (28, 28, 28), 11)
    dm = _load(tmp_path, "organmnist3d", batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 28, 28, 28) and dm.spatial_dims == 3 and dm.num_classes == 11
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1

    path = _write_npz(tmp_path / "bloodmnist.npz", (28, 28, 3), 8)
    dm = _load(tmp_path, "bloodmnist")
    raw = np.load(path)["test_images"][2]
    sample = dm.test_dataset[2]
    assert sample["image"].shape == (3, 28, 28) and dm.in_channels == 3
    assert torch.allclose(sample["image"], torch.from_numpy(raw).permute(2, 0, 1).float() / 127.5 - 1)

    _write_npz(tmp_path / "chestmnist_64.npz", (64, 64), 14, multi_label=True)
    dm = _load(tmp_path, "chestmnist", size=64, subset=0.5)
    sample = dm.train_dataset[0]
    assert sample["label"].dtype == torch.float32 and sample["label"].shape == (14,)
    assert dm.task == "multi-label, binary-class" and dm.splits["train"] == 3

    _write_npz(tmp_path / "breastmnist.npz", (28, 28), 2, dtype=np.float32)
    dm = _load(tmp_path, "breastmnist")
    assert dm.val_dataset[0]["image"].dtype == torch.float32 and dm.val_dataset[0]["image"].abs().max() <= 1


def test_missing_file_message(tmp_path):
    dm = MedMNISTDataModule(name="dermamnist", size=64, root=str(tmp_path))
    dm.prepare_data()  # download=False: nothing happens
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "dermamnist_64.npz") in message and "download=True" in message
    assert "https://zenodo.org/records/10519652/files/dermamnist_64.npz" in message


def test_download_without_network_leaves_nothing(tmp_path):
    dm = MedMNISTDataModule(root=str(tmp_path / "data"), download=True, url="http://127.0.0.1:9/pneumoniamnist.npz")
    with pytest.raises(DownloadError, match="could not download.*save it as .*pneumoniamnist.npz"):
        dm.prepare_data()
    assert list((tmp_path / "data").iterdir()) == []


@pytest.fixture
def http_root(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_from_local_server(tmp_path, http_root):
    served, base = http_root
    source = _write_npz(served / "bloodmnist.npz", (28, 28, 3), 8)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    root = tmp_path / "downloads"
    dm = MedMNISTDataModule(name="bloodmnist", root=str(root), download=True, url=f"{base}/bloodmnist.npz", md5=md5)
    dm.prepare_data()
    assert (root / "bloodmnist.npz").read_bytes() == source.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the MD5 matches the expected one: no warning
        dm.setup()
    assert dm.splits["test"] == 6

    bad = MedMNISTDataModule(name="bloodmnist", root=str(tmp_path / "other"), download=True,
                             url=f"{base}/bloodmnist.npz")  # official MD5 expected: the download is rejected
    with pytest.raises(DownloadError, match=f"MD5 mismatch .*: expected {medmnist_info('bloodmnist').md5}, got {md5}"):
        bad.prepare_data()
    assert list((tmp_path / "other").iterdir()) == []


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an npz"),
        (lambda p: p.write_bytes(SHIPPED.read_bytes()[: 2_000_000]), "truncated or corrupt|unreadable"),
        (lambda p: _write_npz(p, (28, 28), 2, test_labels=None), r"missing keys \['test_labels'\]"),
        (lambda p: _write_npz(p, (28, 28, 28), 2), r"train_images has shape \(6, 28, 28, 28\), expected \(N, H, W\)"),
        (lambda p: _write_npz(p, (32, 32), 2), "spatial shape"),
        (lambda p: _write_npz(p, (28, 28), 2, val_images=np.full((6, 28, 28), np.nan, np.float32)), "NaN"),
        (lambda p: _write_npz(p, (28, 28), 2, test_labels=np.full((6, 1), 2, np.uint8)), r"values in \[2, 2\]"),
        (lambda p: _write_npz(p, (28, 28), 2, train_labels=np.zeros((5, 1), np.uint8)), r"shape \(5, 1\)"),
    ],
    ids=["random-bytes", "truncated", "missing-key", "wrong-ndim", "wrong-size", "nan", "label-range", "label-count"],
)
def test_bad_files_raise_value_error(tmp_path, make, match):
    path = tmp_path / "breastmnist.npz"
    make(path)
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=match) as err:
        dm.setup()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_whole_float_subset_means_a_count_per_class():
    """A command line may parse `--data.init_args.subset 32` as 32.0: it still means 32 per class."""
    dm = MedMNISTDataModule(name="pneumoniamnist", subset=32.0, batch_size=8)
    assert dm.hparams.subset == 32 and isinstance(dm.hparams.subset, int)
    dm.setup("fit")
    assert dm.splits["train"] == 64
