"""MedMNIST v2 (2D and 3D, all sizes of MedMNIST+) as a LightningDataModule.

Reads the official npz files (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for
2D and 3D biomedical image classification", Scientific Data 2023) with numpy only; file names,
URLs, MD5s, tasks and class names come from ``medmnist.info.INFO``. Nothing is ever unpickled.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from medmnist.info import INFO
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY
from lightning_medaug.data.split_module import SplitDataModule
from lightning_medaug.data.splits import check_subset, stratified_subset
from lightning_medaug.downloads import download_file
from lightning_medaug.hashing import file_digests
from lightning_medaug.hparams import save_own_hyperparameters
from lightning_medaug.validation import check_loader_args

__all__ = ["MEDMNIST_SIZES", "MedMNISTInfo", "medmnist_info", "MedMNISTDataset", "MedMNISTDataModule"]

#: Image side lengths of MedMNIST (28) and MedMNIST+ (64, 128, 224; 3D sets only have 28 and 64).
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)
#: Environment variable naming a data folder used when ``root`` is not given.
DATA_ENV_VAR = "MEDAUG_DATA"
_SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
_MULTI_LABEL = "multi-label, binary-class"
#: Files whose MD5 is not the official one for a documented reason, by (file name, MD5): they load
#: with an INFO log line instead of the warning any other MD5 gets.
DOCUMENTED_COPIES: dict[tuple[str, str], str] = {
    ("pneumoniamnist.npz", "238a40f8f78b9a61dfdd21e86aac35f9"):
        "the copy shipped with lightning-medaug: the official images and labels, the train split in another "
        "order, so a seeded subset differs from the official file's (lightning_medaug/datasets/README.md)",
}
log = logging.getLogger(__name__)


def shipped_datasets_dir() -> Path:
    """The folder of data sets shipped inside the package (``lightning_medaug/datasets``)."""
    return Path(__file__).resolve().parent.parent / "datasets"


@dataclass(frozen=True)
class MedMNISTInfo:
    """What the official metadata says about one MedMNIST set at one size."""

    name: str
    size: int
    filename: str
    url: str
    md5: str
    spatial_dims: int
    in_channels: int
    task: str
    class_names: tuple[str, ...]


def medmnist_info(name: str, size: int = 28) -> MedMNISTInfo:
    """Metadata of set ``name`` at ``size`` from ``medmnist.info.INFO``; ``ValueError`` if unknown."""
    if name not in INFO:
        close = difflib.get_close_matches(name, INFO, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown MedMNIST set {name!r}.{hint} Available: {', '.join(INFO)}")
    meta = INFO[name]
    suffix = "" if size == 28 else f"_{size}"
    if size not in MEDMNIST_SIZES or f"url{suffix}" not in meta or f"MD5{suffix}" not in meta:
        sizes = [s for s in MEDMNIST_SIZES if f"url{'' if s == 28 else f'_{s}'}" in meta]
        raise ValueError(f"{name} has no size {size}; available sizes: {sizes}")
    labels = meta["label"]
    return MedMNISTInfo(
        name=name,
        size=size,
        filename=f"{name}{suffix}.npz",
        url=meta[f"url{suffix}"],
        md5=meta[f"MD5{suffix}"],
        spatial_dims=3 if meta["python_class"].endswith("3D") else 2,
        in_channels=int(meta["n_channels"]),
        task=meta["task"],
        class_names=tuple(labels[str(i)] for i in range(len(labels))),
    )


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class MedMNISTDataset(Dataset):
    """In-memory MedMNIST split yielding ``{"image", "label"}`` dicts.

    Images are kept in the file's dtype (uint8 uses a quarter of the memory of float32) and mapped
    to float32 in [-1, 1] per sample.

    Args:
        images: (N, C, *S) uint8 in [0, 255] or float in [0, 1].
        labels: (N,) int64 class indices, or (N, K) float32 multi-hot vectors.
        transform: optional callable applied to every sample dict.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[dict], dict] | None = None):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.transform = images, labels, transform
        self._divisor = 127.5 if images.dtype == torch.uint8 else 0.5

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = {IMAGE_KEY: self.images[index].float() / self._divisor - 1.0, LABEL_KEY: self.labels[index]}
        return self.transform(sample) if self.transform is not None else sample


class MedMNISTDataModule(SplitDataModule):
    """Any MedMNIST v2 set (2D gray/RGB or 3D, sizes 28/64/128/224) from its official npz file.

    Batches are ``{"image": float32 (B, C, *S) in [-1, 1], "label": int64 (B,)}``; for the
    multi-label ChestMNIST, ``label`` is a float32 (B, 14) multi-hot vector. Train, val and test are
    the official splits, kept in separate arrays; only train is ever subsetted.

    Args:
        name: set name as in ``medmnist.INFO`` (``"pneumoniamnist"``, ``"organmnist3d"``, ...).
        size: image side length: 28, or 64/128/224 for MedMNIST+ (3D: 28 or 64).
        root: folder holding ``{name}.npz`` (size 28) or ``{name}_{size}.npz``. ``None`` means
            ``$MEDAUG_DATA`` if set, else the package's shipped folder (holds PneumoniaMNIST-28).
        download: fetch the file from Zenodo in ``prepare_data()`` when it is missing.
        subset: ``None`` for all of train; a float in (0, 1] for a class-stratified fraction; an
            int for exactly that many training samples per class.
        subset_seed: seed of the subset draw (subsets of one seed are nested).
        batch_size, num_workers: loader settings.
        train_transforms: callable on each training sample dict (e.g. :func:`classic_augmentation`).
        pin_memory: pin loader memory; ``None`` pins when CUDA is available.
        url, md5: override the official URL/MD5, e.g. for a local mirror.
    """

    def __init__(self, name: str = "pneumoniamnist", size: int = 28, root: str | None = None,
                 download: bool = False, subset: float | int | None = None, subset_seed: int = 0,
                 batch_size: int = 128, num_workers: int = 0, train_transforms: Callable[[dict], dict] | None = None,
                 pin_memory: bool | None = None, url: str | None = None, md5: str | None = None):
        super().__init__()
        info = medmnist_info(name, size)
        subset = check_subset(subset)
        if subset is not None:
            if isinstance(subset, int) and info.task == _MULTI_LABEL:
                raise ValueError(f"{name} is multi-label: samples per class is undefined, pass subset as a fraction")
        check_loader_args(batch_size, num_workers, train_transforms)
        save_own_hyperparameters(self, ignore=["train_transforms"])
        self.info = info
        self.url, self.md5 = url or info.url, md5 or info.md5
        self.root = Path(root).expanduser() if root else _default_root()
        self.path = self.root / info.filename
        self.spatial_dims, self.in_channels, self.image_size = info.spatial_dims, info.in_channels, size
        self.task, self.class_names, self.num_classes = info.task, info.class_names, len(info.class_names)
        self.multi_label = info.task == _MULTI_LABEL
        self.train_transforms = train_transforms
        self.pin_memory = pin_memory
        self.subset_indices: np.ndarray | None = None  # indices into the official train split
        self._digests: tuple[str, str] | None = None

    # -- files -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download the npz file when ``download=True`` and it is not there yet."""
        if self.hparams.download and not self.path.is_file():
            download_file(self.url, self.path, self.md5, "md5", advice="then run again with download=False")

    @property
    def dataset_hash(self) -> str:
        """SHA-256 of the npz file (cached), to key caches on the exact data used."""
        return self._file_digests()[1]

    def _file_digests(self) -> tuple[str, str]:
        if self._digests is None:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"MedMNIST file not found: {self.path}. Download it from {self.url} and save it there, "
                    f"or pass download=True (root={str(self.root)!r}; set root or ${DATA_ENV_VAR} to use another "
                    "folder)."
                )
            digests = file_digests(self.path, ("md5", "sha256"))  # one pass: MD5 checks, SHA-256 identifies
            self._digests = digests["md5"], digests["sha256"]
            documented = DOCUMENTED_COPIES.get((self.info.filename, self._digests[0]))
            if documented is not None:
                log.info("%s has MD5 %s, not the official %s: %s", self.path, self._digests[0], self.md5, documented)
            elif self._digests[0] != self.md5:
                warnings.warn(
                    f"{self.path} has MD5 {self._digests[0]}, not the official MD5 {self.md5} of {self.info.filename}; "
                    "loading it anyway. If you did not change this file on purpose, delete it and download it again.",
                    UserWarning, stacklevel=3,
                )
        return self._digests

    # -- setup -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (all for ``None``) into memory, once."""
        self._ensure(_STAGE_SPLITS.get(stage or "", _SPLITS))

    def _ensure(self, splits: tuple[str, ...]) -> None:
        missing = [s for s in splits if s not in self.datasets]
        if not missing:
            return
        self._file_digests()
        arrays = _read_npz(self.path, missing)
        for split in missing:
            images, labels = _validate(self.path, split, arrays[f"{split}_images"], arrays[f"{split}_labels"],
                                       self.info)
            transform = None
            if split == "train":
                if self.hparams.subset is not None:
                    keys = np.zeros(len(labels), dtype=np.int64) if self.multi_label else labels.numpy()
                    self.subset_indices = stratified_subset(keys, self.hparams.subset, self.hparams.subset_seed)
                    index = torch.from_numpy(self.subset_indices)
                    images, labels = images[index], labels[index]
                transform = self.train_transforms
            self.datasets[split] = MedMNISTDataset(images, labels, transform)

    def _dataset(self, split: str) -> MedMNISTDataset:
        self._ensure((split,))  # reads only the splits asked for
        return self.datasets[split]


def _default_root() -> Path:
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else shipped_datasets_dir()


def _read_npz(path: Path, splits: list[str]) -> dict[str, np.ndarray]:
    """Arrays of ``splits`` from an npz file; ``ValueError`` naming the file on any defect."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every npz is a zip archive
            raise ValueError(f"{path}: not an npz (zip) archive; delete it and fetch it again")
    try:
        npz: Any = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises many types on garbage (BadZipFile, ValueError, OSError, ...)
        raise ValueError(f"{path}: truncated or corrupt npz file ({_one_line(err)}); delete it and fetch it "
                         "again") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not an npz archive with the MedMNIST keys")
    with npz:
        expected = [f"{s}_{part}" for s in _SPLITS for part in ("images", "labels")]
        absent = [k for k in expected if k not in npz.files]
        if absent:
            raise ValueError(f"{path}: missing keys {absent} (found {sorted(npz.files)}); expected the MedMNIST layout")
        arrays = {}
        for key in (f"{s}_{part}" for s in splits for part in ("images", "labels")):
            try:
                arrays[key] = npz[key]
            except Exception as err:
                raise ValueError(f"{path}: array {key!r} is unreadable ({_one_line(err)}); the file is corrupt "
                                 "or truncated, fetch it again") from None
    return arrays


def _validate(path: Path, split: str, images: np.ndarray, labels: np.ndarray,
              info: MedMNISTInfo) -> tuple[Tensor, Tensor]:
    """Check one split against the set's metadata; return channel-first images and labels."""
    where = f"{path}: {split}"
    sd, channels, k = info.spatial_dims, info.in_channels, len(info.class_names)
    layout = ("(N, D, H, W)" if sd == 3 else "(N, H, W)") if channels == 1 else "(N, H, W, 3)"
    if images.ndim != 1 + sd + (channels > 1) or (channels > 1 and images.shape[-1] != channels):
        raise ValueError(f"{where}_images has shape {images.shape}, expected {layout} for {info.name} "
                         f"({sd}D, {channels} channel(s))")
    if images.shape[0] == 0:
        raise ValueError(f"{where}_images is empty; every split needs at least one sample")
    if any(s != info.size for s in images.shape[1:1 + sd]):
        raise ValueError(f"{where}_images has spatial shape {images.shape[1:1 + sd]}, expected side {info.size} "
                         f"(file name {info.filename}; pass the matching size=)")
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise ValueError(f"{where}_images contains NaN or infinite values; fix the file or fetch it again")
        if images.min() < 0.0 or images.max() > 1.0:
            raise ValueError(f"{where}_images is float in [{images.min():.3g}, {images.max():.3g}]; "
                             "float images must be in [0, 1] (or store uint8 in [0, 255])")
        images = images.astype(np.float32, copy=False)
    elif images.dtype != np.uint8:
        raise ValueError(f"{where}_images has dtype {images.dtype}, expected uint8 (or float in [0, 1])")
    expected_labels = (images.shape[0], k) if info.task == _MULTI_LABEL else (images.shape[0], 1)
    if labels.ndim == 1 and expected_labels[1] == 1:
        labels = labels[:, None]
    if labels.shape != expected_labels:
        raise ValueError(f"{where}_labels has shape {labels.shape}, expected {expected_labels}")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        if not np.issubdtype(labels.dtype, np.floating) or not np.isfinite(labels).all() or (labels % 1).any():
            raise ValueError(f"{where}_labels has dtype {labels.dtype} with non-integer values; labels must be "
                             "class indices")
    high = 1 if info.task == _MULTI_LABEL else k - 1
    if labels.min() < 0 or labels.max() > high:
        raise ValueError(f"{where}_labels has values in [{labels.min()}, {labels.max()}], expected 0..{high} "
                         f"for {info.name}")
    # Channel-first without copying gray images; RGB needs one contiguous copy.
    images = images[:, None] if channels == 1 else np.ascontiguousarray(np.moveaxis(images, -1, 1))
    label_tensor = (torch.from_numpy(labels.astype(np.float32)) if info.task == _MULTI_LABEL
                    else torch.from_numpy(labels[:, 0].astype(np.int64)))
    return torch.from_numpy(np.ascontiguousarray(images)), label_tensor
