"""Score every sample of a bank and record which ones a keep rule keeps.

:func:`score_bank` writes two files into the bank folder, each atomically:

* ``scores.csv``: one row per sample, ``id, label, confidence, novelty, diversity, keep, score``:

  - ``confidence``: mean over the fold proxies (:mod:`~.proxies`) of the softmax probability of the
    sample's bank label (empty for an unlabelled bank);
  - ``novelty``: distance to the nearest real training image (pixel space by default, or the
    feature space of an extractor, as in ``medaug evaluate``); 0 for an exact copy;
  - ``diversity``: distance to the nearest other bank sample of its class (0: it has a duplicate);
  - ``keep`` and ``score``: 1 for the samples the :class:`~.rule.KeepRule` keeps, 0 for the others,
    so ``SyntheticBank(bank, min_score=1)`` and ``SyntheticMixDataModule(bank=..., min_score=1)``
    read exactly the chosen set; ``score_column="confidence"`` filters on a column instead.

* ``selection.json``: the rule, the proxies' settings, fold seed and out-of-fold scores, the
  training set's size and SHA-256, the novelty space, the data config and the library version:
  what it takes to make the same choice again.

Only the data module's training loader's data set is read (never its validation or test split).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_medaug.bank import manifest as mf
from lightning_medaug.bank.reader import SyntheticBank
from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.evaluation.inputs import (
    build_datamodule,
    describe_extractor,
    load_data_config,
    resolve_extractor,
    scrub_paths,
)
from lightning_medaug.hashing import file_digest
from lightning_medaug.metrics.features import dataset_fingerprint, extract_features
from lightning_medaug.metrics.memorization import nearest_neighbours
from lightning_medaug.selection.proxies import ProxyConfig, fold_probabilities, stratified_folds
from lightning_medaug.selection.rule import KeepRule, sibling_distances

__all__ = ["SCORE_COLUMNS", "SELECTION_FILE", "score_bank"]

SELECTION_FILE = "selection.json"
#: Columns of ``scores.csv``, in order.
SCORE_COLUMNS = ("id", "label", "confidence", "novelty", "diversity", "keep", "score")


@contextmanager
def _stages(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar (on stderr) over ``total`` steps; yields ``advance(what_was_done)``."""
    if not enabled:
        yield lambda _: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("score: {task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("starting", total=total)
        yield lambda what: bar.update(task, advance=1, description=what)


def _datamodule(data: Any) -> tuple[L.LightningDataModule, dict[str, Any]]:
    """The real data module and the config recorded for it (paths reduced to file names)."""
    if isinstance(data, L.LightningDataModule):
        data.prepare_data()
        hparams = json.loads(json.dumps(dict(getattr(data, "hparams", {})), default=str))
        return data, {"class_path": f"{type(data).__module__}.{type(data).__qualname__}", "init_args": hparams}
    config = load_data_config(data)
    return build_datamodule(config), scrub_paths(config)


def training_set(datamodule: L.LightningDataModule) -> Dataset:
    """The data set of the training loader: the only real images the selection reads."""
    datamodule.setup("fit")
    return datamodule.train_dataloader().dataset


def _read_training_set(dataset: Dataset) -> tuple[Tensor, Tensor | None]:
    """Images ``(N, C, *S)`` float32 and labels ``(N,)`` int64 (``None`` without labels) of a data set."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the data's training set is empty")
    images, labels = [], []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, label, _ = unpack_batch(dataset[index])
        images.append(torch.as_tensor(image).float())
        labels.append(label)
    if any(label is None for label in labels):
        return torch.stack(images), None
    if any(label.numel() != 1 for label in labels):
        raise ValueError("the training labels are multi-hot (multi-label data): a bank sample has one class, so "
                         "its confidence is undefined; score a single-label data set")
    return torch.stack(images), torch.cat(labels)


def _check_inputs(bank: SyntheticBank, images: Tensor, labels: Tensor | None, num_classes: int | None,
                  rule: KeepRule) -> int | None:
    """Raise on a bank that cannot be scored against this data; the class count proxies learn (or None)."""
    if tuple(bank.image_shape) != tuple(images.shape[1:]):
        raise ValueError(f"the bank's images have shape {tuple(bank.image_shape)}, the real training images "
                         f"{tuple(images.shape[1:])}: score a bank drawn from a generator trained on this data")
    if bank.num_classes == 0:
        if rule.uses_confidence:
            raise ValueError(f"{bank.path} is unlabelled (an unconditional generator): confidence needs a label "
                             "per sample; set min_confidence to 0 to select on novelty and diversity only")
        return None
    if labels is None:
        raise ValueError("the data's training set has no labels: the proxies that judge a labelled bank's "
                         "confidence are classifiers of them; pass a labelled data set")
    classes = int(num_classes) if num_classes else int(labels.max()) + 1
    bad = np.unique(bank.labels[(bank.labels < 0) | (bank.labels >= classes)])
    if len(bad):
        raise ValueError(f"the bank holds labels {bad.tolist()} that are not classes of the data (0..{classes - 1}): "
                         "score a bank drawn from a generator trained on this data")
    return classes


def _features(extractor: nn.Module | None, bank: SyntheticBank, images: Tensor,
              batch_size: int) -> tuple[Tensor, Tensor]:
    """Bank and training-set rows in the novelty space (flattened pixels when ``extractor`` is None)."""
    chunks = [extract_features(extractor, bank.read(np.arange(start, min(start + batch_size, len(bank))))["image"],
                               batch_size) for start in range(0, len(bank), batch_size)]
    return torch.cat(chunks).cpu(), extract_features(extractor, images, batch_size).cpu()


def _proxy_quality(records: list[dict[str, Any]], labels: np.ndarray) -> dict[str, float]:
    """Mean out-of-fold accuracy beside the majority-class rate; a warning when it does not beat that rate."""
    accuracy = float(np.mean([r.get("out_of_fold_acc", np.nan) for r in records]))
    majority = float(np.bincount(labels).max() / len(labels))
    if not accuracy > majority:
        # such proxies call every sample the majority class: a confidence rule would empty the others
        warnings.warn(f"the proxies' out-of-fold accuracy ({accuracy:.3f}) does not beat always answering the "
                      f"majority class ({majority:.3f}); train them longer (more epochs or steps) before keeping "
                      "samples by confidence", stacklevel=3)
    return {"out_of_fold_acc": accuracy, "majority_rate": majority}


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def _write_scores(path: Path, bank: SyntheticBank, columns: Mapping[str, np.ndarray]) -> None:
    lines = [",".join(SCORE_COLUMNS)]
    for i, sample_id in enumerate(bank.ids.tolist()):
        keep = int(columns["keep"][i])
        lines.append(f"{sample_id},{int(bank.labels[i])},{_cell(columns['confidence'][i])},"
                     f"{_cell(columns['novelty'][i])},{_cell(columns['diversity'][i])},{keep},{float(keep)!r}")
    mf.atomic_write_text(path / mf.SCORES_FILE, "\n".join(lines) + "\n")


def score_bank(bank: str | Path | SyntheticBank, data: Any, rule: KeepRule | None = None, folds: int = 5,
               proxy: ProxyConfig | Mapping[str, Any] | None = None, seed: int = 0,
               extractor: str | nn.Module | None = None, extractor_options: Mapping[str, Any] | None = None,
               trainer_kwargs: Mapping[str, Any] | None = None, batch_size: int = 256,
               progress: bool = False) -> dict[str, Any]:
    """Score every sample of ``bank`` against the real training set of ``data``; write ``scores.csv``
    and ``selection.json`` into the bank folder (see the module docstring) and return the record.

    Args:
        bank: the bank folder (or a ``SyntheticBank`` of it; every sample is scored, whatever its filters).
        data: a ``LightningDataModule``, or a recipe / data config (file, recipe name, inline or dict)
            as ``medaug evaluate --data`` takes it; only its training loader's data set is read.
        rule: the :class:`~.rule.KeepRule` (default: keep every sample).
        folds: proxy classifiers, each trained with one stratified fold of the training set held out.
        proxy: :class:`~.proxies.ProxyConfig` (or its fields as a dict).
        seed: seeds the fold assignment and each proxy (fold ``k``: ``seed + k``).
        extractor: novelty space: ``None`` or ``"none"`` (pixels), ``"domain"`` (the cached classifier
            features ``medaug evaluate`` uses), a folder from ``save_feature_extractor`` or a module.
        extractor_options: options of a registered extractor (``backbone``, ``epochs``, ...).
        trainer_kwargs: extra ``lightning.Trainer`` arguments of the proxies (``accelerator``, ...).
        batch_size: bank images read and embedded at once.
        progress: show a progress bar over the folds and the scoring.
    """
    rule = KeepRule() if rule is None else rule
    proxy = ProxyConfig(**proxy) if isinstance(proxy, Mapping) else (proxy or ProxyConfig())
    bank = SyntheticBank(bank.path if isinstance(bank, SyntheticBank) else bank)
    datamodule, data_record = _datamodule(data)
    if bool(getattr(datamodule, "multi_label", False)):
        raise ValueError(f"{type(datamodule).__name__} is multi-label: a bank sample has one class, so its "
                         "confidence is undefined; score a single-label data set")
    train = training_set(datamodule)
    images, labels = _read_training_set(train)
    num_classes = _check_inputs(bank, images, labels, getattr(datamodule, "num_classes", None), rule)
    training = {"split": "train", "num_samples": len(images), "sha256": dataset_fingerprint(train)}
    with _stages((folds if num_classes else 0) + 2, progress) as advance:
        confidence = np.full(len(bank), np.nan)
        proxies: dict[str, Any] | None = None
        if num_classes is not None:
            assignment = stratified_folds(labels.numpy(), folds, seed)
            identity = {"training_sha256": training["sha256"],
                        "bank_manifest_sha256": file_digest(bank.path / mf.MANIFEST_FILE)}
            votes, records, cache = fold_probabilities(images, labels, bank, assignment, num_classes, proxy, seed,
                                                       identity, trainer_kwargs, advance)
            confidence = votes.mean(axis=0)[np.arange(len(bank)), bank.labels].astype(np.float64)
            proxies = {"folds": folds, "seed": seed, "config": asdict(proxy), "num_classes": num_classes,
                       "fold_sizes": np.bincount(assignment, minlength=folds).tolist(), "records": records,
                       "saved_in": cache, **_proxy_quality(records, labels.numpy())}
        if isinstance(extractor, nn.Module):
            model, kind = extractor, type(extractor).__name__
        else:
            model, kind = resolve_extractor(extractor or "none", datamodule, **dict(extractor_options or {}))
        bank_rows, train_rows = _features(model, bank, images, batch_size)
        novelty = nearest_neighbours(bank_rows, train_rows, 1)[0][:, 0].double().numpy()
        advance("novelty")
        keep = rule.keep(bank.labels, confidence, novelty, bank_rows)
        diversity = sibling_distances(bank.labels, bank_rows, rule.per_class)
        advance("rule")
    _write_scores(bank.path, bank, {"confidence": confidence, "novelty": novelty, "diversity": diversity,
                                    "keep": keep})
    from lightning_medaug import __version__

    record = {
        "rule": asdict(rule), "kept": int(keep.sum()), "num_samples": len(bank),
        "kept_per_class": {str(c): int(keep[bank.labels == c].sum()) for c in np.unique(bank.labels).tolist()},
        "score": "1 for kept samples, 0 for dropped ones: SyntheticBank(bank, min_score=1) reads the kept set",
        "proxies": proxies, "novelty": describe_extractor(kind, model), "training_set": training,
        "data": data_record, "bank": {"checkpoint_sha256": bank.info["settings"].get("checkpoint_sha256"),
                                      "manifest_sha256": file_digest(bank.path / mf.MANIFEST_FILE)},
        "library_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    mf.atomic_write_text(bank.path / SELECTION_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
