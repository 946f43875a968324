"""Proxy classifiers trained by k-fold on the real training set, and their votes on a bank.

Fold ``k`` holds out one stratified ``1/folds`` of the training images and trains the library's
:class:`~lightning_medaug.tasks.ClassificationTask` on the rest with a Lightning ``Trainer``; its
held-out fold measures it (out-of-fold accuracy and AUROC, so no validation or test image is ever
read), and it then predicts class probabilities of every bank sample. The ensemble of the ``folds``
proxies is the bank's confidence judge.

Every finished fold is saved in the bank folder (``proxies/<key>/fold-000.npy`` with its
``.json`` record written last), keyed by the training set, the bank, the folds, the seed and the
proxy settings: a rerun, or the same proxies under another keep rule, starts from the folds already
done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_medaug.bank import manifest as mf
from lightning_medaug.tasks.classification import ClassificationTask
from lightning_medaug.validation import check_at_least

__all__ = ["PROXY_DIR", "ProxyConfig", "fold_probabilities", "stratified_folds"]

#: Folder of the bank holding the proxies' saved votes.
PROXY_DIR = "proxies"


@dataclass(frozen=True)
class ProxyConfig:
    """How each fold's proxy classifier is built and trained.

    The defaults are the shortest training measured to beat the majority class on 10% of
    PneumoniaMNIST (376 images a fold: about 240 steps, out-of-fold accuracy 0.94 against a
    majority rate of 0.74); 5 epochs in batches of 64 did not beat it, and such proxies call every
    sample the majority class.

    Args:
        backbone: a timm model name (2D) or ``resnet10/18/34/50``, ``densenet121`` (3D), as for
            :class:`~lightning_medaug.tasks.ClassificationTask`; always randomly initialised.
        epochs, max_steps: training length (``max_steps=-1``: ``epochs`` decides).
        batch_size: training and prediction batch size.
        lr: AdamW's peak learning rate.
        small_input_stem: the 3x3 stride-1 ResNet stem for 28x28 inputs (slower, often better).
    """

    backbone: str = "resnet18"
    epochs: int = 20
    max_steps: int = -1
    batch_size: int = 32
    lr: float = 1e-3
    small_input_stem: bool = False

    def __post_init__(self) -> None:
        check_at_least(1, batch_size=self.batch_size)
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError(f"give epochs >= 1 or max_steps >= 1 (got epochs={self.epochs}, "
                             f"max_steps={self.max_steps})")


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (``0..folds-1``) of every sample: each class is shuffled with ``seed`` and dealt round
    robin, so every fold holds about ``1/folds`` of each class."""
    labels = np.asarray(labels).reshape(-1)
    if folds < 2:
        raise ValueError(f"folds must be at least 2 (each proxy holds one fold out), got {folds}")
    if len(labels) < folds:
        raise ValueError(f"the training set has {len(labels)} images, fewer than folds={folds}; lower --folds")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # continue the deal where the last class stopped, so small classes do not all start at fold 0
        assignment[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return assignment


def _cache_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _quiet_trainers() -> Iterator[None]:
    """Lightning's info lines (devices, tips, "max_epochs reached") at warning level: every fold's
    Trainer would print the same ones between the progress bar's updates."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trainer(config: ProxyConfig, trainer_kwargs: Mapping[str, Any] | None) -> L.Trainer:
    options: dict[str, Any] = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                               "enable_progress_bar": False, "enable_model_summary": False,
                               "max_epochs": config.epochs if config.max_steps < 1 else -1,
                               "max_steps": config.max_steps, "num_sanity_val_steps": 0,
                               **(trainer_kwargs or {})}
    return L.Trainer(**options)


def _train_fold(images: Tensor, labels: Tensor, held_out: np.ndarray, bank: Dataset, num_classes: int,
                config: ProxyConfig, seed: int, trainer_kwargs: Mapping[str, Any] | None
                ) -> tuple[np.ndarray, dict[str, float]]:
    """Train one proxy on the images outside ``held_out``; its bank probabilities and held-out scores."""
    train = torch.from_numpy(np.setdiff1d(np.arange(len(labels)), held_out))
    L.seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(backbone=config.backbone, spatial_dims=images.ndim - 2, in_channels=images.shape[1],
                              num_classes=num_classes, small_input_stem=config.small_input_stem, lr=config.lr)
    loader = DataLoader(TensorDataset(images[train], labels[train]), batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    held = torch.from_numpy(held_out)
    held_loader = DataLoader(TensorDataset(images[held], labels[held]), batch_size=config.batch_size)
    with warnings.catch_warnings(), _quiet_trainers():
        # held-out scores come after training, not from a fit-loop validation
        warnings.filterwarnings("ignore", message=".*(val_dataloader|does not have many workers|No positive samples"
                                                  "|No negative samples).*")
        trainer = _trainer(config, trainer_kwargs)
        trainer.fit(task, train_dataloaders=loader)
        scores = trainer.validate(task, held_loader, verbose=False)[0]
        votes = trainer.predict(task, DataLoader(bank, batch_size=config.batch_size))
    metrics = {key.replace("val/", "out_of_fold_"): float(value) for key, value in scores.items()}
    return torch.cat(votes).float().numpy(), metrics


def fold_probabilities(images: Tensor, labels: Tensor, bank: Any, assignment: np.ndarray, num_classes: int,
                       config: ProxyConfig, seed: int, identity: Mapping[str, Any],
                       trainer_kwargs: Mapping[str, Any] | None = None,
                       advance: Callable[[str], None] = lambda _: None) -> tuple[np.ndarray, list[dict[str, Any]], str]:
    """Bank probabilities ``(folds, N_bank, num_classes)`` of the fold proxies, their records, and the
    cache folder's name (``proxies/<key>`` in the bank).

    Args:
        images, labels: the real training set, ``(N, C, *S)`` and ``(N,)``; nothing else is read.
        bank: the unfiltered :class:`~lightning_medaug.bank.SyntheticBank` to vote on.
        assignment: the fold of every training image (:func:`stratified_folds`).
        seed: fold ``k``'s proxy is seeded with ``seed + k``.
        identity: what else keys the saved folds (training-set and bank hashes).
        trainer_kwargs: extra ``lightning.Trainer`` arguments (``accelerator``, ``precision``, ...).
        advance: called with a description once each fold is done.
    """
    folds = int(assignment.max()) + 1
    settings = {**identity, "folds": folds, "seed": seed, "proxy": asdict(config),
                "assignment": hashlib.sha256(assignment.tobytes()).hexdigest()}
    key = _cache_key(settings)
    folder = Path(bank.path) / PROXY_DIR / key
    folder.mkdir(parents=True, exist_ok=True)
    mf.atomic_write_text(folder / "settings.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
    probabilities, records = [], []
    for fold in range(folds):
        votes_file, record_file = folder / f"fold-{fold:03d}.npy", folder / f"fold-{fold:03d}.json"
        if record_file.is_file() and votes_file.is_file():  # the record is written last: the fold is done
            record = json.loads(record_file.read_text(encoding="utf-8"))
            votes = np.load(votes_file, allow_pickle=False)
        else:
            held_out = np.flatnonzero(assignment == fold)
            votes, metrics = _train_fold(images, labels, held_out, bank, num_classes, config, seed + fold,
                                         trainer_kwargs)
            tmp = mf.temporary(votes_file)
            with open(tmp, "wb") as handle:
                np.save(handle, votes, allow_pickle=False)
            mf.commit(tmp, votes_file)
            record = {"fold": fold, "held_out": len(held_out), "trained_on": len(labels) - len(held_out),
                      "seed": seed + fold, **metrics}
            mf.atomic_write_text(record_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
        if votes.shape != (len(bank), num_classes):
            raise ValueError(f"{votes_file} holds votes of shape {votes.shape}, not ({len(bank)}, {num_classes}); "
                             f"delete {folder} and score again")
        probabilities.append(votes)
        records.append(record)
        advance(f"proxy {fold + 1}/{folds}")
    return np.stack(probabilities), records, f"{PROXY_DIR}/{key}"
