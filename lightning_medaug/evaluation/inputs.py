"""What ``medaug evaluate`` reads: the real data module, its splits, the feature extractor, the
privacy report, and a path-free summary of each for the report.

The data module comes from a LightningCLI-style config (a recipe's ``data:`` section, or a
``class_path`` / ``init_args`` mapping) and is built by jsonargparse, exactly as ``medaug fit``
would build it, minus training-time augmentation: the real images are the reference, so they
are read as they are.
"""

from __future__ import annotations

import copy
import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import Dataset

from lightning_medaug.cache import cache_folder
from lightning_medaug.hashing import file_digest
from lightning_medaug.recipe_files import MIX_CLASS, find_recipe

__all__ = ["DROPPED_DATA_ARGS", "bank_provenance", "build_datamodule", "default_extractor_cache", "describe_extractor",
           "load_data_config", "read_privacy", "real_splits", "resolve_extractor", "scrub_paths"]

#: init arguments set to ``None`` before the data module is built: augmentation of the training split.
DROPPED_DATA_ARGS = ("train_transforms",)
#: held-out splits that can serve as the real-vs-real floor, in order of preference.
FLOOR_SPLITS = ("test", "val")


# -- the data ------------------------------------------------------------------------------------
def _parse_config_text(spec: str) -> Any:
    try:
        path = find_recipe(spec)
    except (OSError, ValueError):  # not a file (a long inline mapping is not even a valid file name)
        path = None
    text = spec.strip() if path is None else path.read_text(encoding="utf-8")
    if path is None and not (text.startswith("{") or "class_path" in text):
        raise FileNotFoundError(f"data config {spec!r} not found: pass a recipe YAML (its data: section is used), a "
                                "YAML/JSON file with class_path and init_args, or such a mapping inline")
    try:
        return yaml.safe_load(text)  # YAML reads JSON too
    except yaml.YAMLError as err:
        what = "the inline --data mapping" if path is None else f"--data file {path.name}"
        raise ValueError(f"{what} is not valid YAML/JSON: {' '.join(str(err).split())}") from None


def load_data_config(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The real data module's ``{"class_path", "init_args"}`` from a recipe, a data config or a mapping.

    A ``SyntheticMixDataModule`` is unwrapped to the real module it mixes into.
    """
    config = copy.deepcopy(dict(spec)) if isinstance(spec, Mapping) else _parse_config_text(spec)
    if isinstance(config, Mapping) and "class_path" not in config and isinstance(config.get("data"), Mapping):
        config = config["data"]
    while isinstance(config, Mapping) and config.get("class_path") == MIX_CLASS:
        config = (config.get("init_args") or {}).get("datamodule")
    if not isinstance(config, Mapping) or not isinstance(config.get("class_path"), str):
        raise ValueError("the data config needs a class_path (and init_args), e.g. {class_path: "
                         "lightning_medaug.data.PhantomDataModule, init_args: {image_size: 32}}, or a recipe "
                         "with such a data: section")
    config = {"class_path": config["class_path"], "init_args": dict(config.get("init_args") or {})}
    for name in DROPPED_DATA_ARGS:
        if config["init_args"].get(name) is not None:
            config["init_args"][name] = None
    return config


def build_datamodule(config: Mapping[str, Any]) -> L.LightningDataModule:
    """Instantiate a data module config with jsonargparse (as LightningCLI does); call ``prepare_data``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_object({"data": dict(config)})).data
    datamodule.prepare_data()
    return datamodule


def _split(datamodule: L.LightningDataModule, split: str) -> Dataset | None:
    try:  # SplitDataModule and friends expose their splits directly
        dataset = getattr(datamodule, f"{split}_dataset", None)
    except (ValueError, KeyError):
        dataset = None
    if dataset is None:
        datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        try:
            dataset = getattr(getattr(datamodule, f"{split}_dataloader")(), "dataset", None)
        except (NotImplementedError, MisconfigurationException, ValueError, KeyError, AttributeError):
            return None
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    return dataset


def real_splits(datamodule: L.LightningDataModule) -> tuple[Dataset, Dataset, str]:
    """``(train, held_out, held_out_name)``: the training split and the first of test / val it has."""
    train = _split(datamodule, "train")
    if train is None or len(train) == 0:
        raise ValueError(f"{type(datamodule).__name__} has no map-style, non-empty training split to compare with")
    for name in FLOOR_SPLITS:
        held_out = _split(datamodule, name)
        if held_out is not None and len(held_out) > 0:
            return train, held_out, name
    raise ValueError(f"{type(datamodule).__name__} has no test or validation split: the real-vs-real floor and the "
                     "copy threshold need held-out real images")


# -- the feature extractor -------------------------------------------------------------------------
def default_extractor_cache() -> Path:
    """``extractors`` in the cache folder (:func:`~lightning_medaug.cache.cache_folder`)."""
    return cache_folder() / "extractors"


def resolve_extractor(name: str, datamodule: L.LightningDataModule, cache_dir: str | Path | None = None,
                      **options: Any) -> tuple[nn.Module | None, str]:
    """``(extractor, kind)`` for ``"none"`` (pixel space: ``None``), a folder written by
    ``save_feature_extractor`` (kind ``"folder"``), or a registered feature extractor such as
    ``"domain"``, trained or loaded from ``cache_dir`` on ``datamodule`` with ``options``."""
    from lightning_medaug.metrics import load_feature_extractor
    from lightning_medaug.registry import FEATURE_EXTRACTORS

    if name == "none":
        return None, "none"
    folder = Path(name).expanduser()
    if folder.is_dir():
        return load_feature_extractor(folder), "folder"
    if name in FEATURE_EXTRACTORS:
        factory = FEATURE_EXTRACTORS.get(name)
        return factory(datamodule, default_extractor_cache() if cache_dir is None else cache_dir, **options), name
    if os.sep in name or "/" in name or name.startswith("."):
        raise FileNotFoundError(f"feature extractor folder {name} not found: pass a folder written by "
                                "save_feature_extractor(), a registered name, or none")
    raise ValueError(f"unknown feature extractor {name!r}: use none (pixel space), a registered name "
                     f"({', '.join(FEATURE_EXTRACTORS.list())}) or a folder written by save_feature_extractor()")


def describe_extractor(kind: str, extractor: nn.Module | None, absolute_paths: bool = False) -> dict[str, Any]:
    """What the report says about the extractor: kind, backbone, width, cache entry, validation scores."""
    if extractor is None:
        return {"name": "none", "space": "pixel"}
    info: dict[str, Any] = {"name": kind, "space": "feature", "class": type(extractor).__name__,
                            "num_features": getattr(extractor, "num_features", None)}
    config = getattr(extractor, "config", {}) or {}
    path = getattr(extractor, "path", None)
    if config:
        info.update({"backbone": config.get("task_init_args", {}).get("backbone"),
                     "data_hash": str(config.get("data_hash", ""))[:16] or None,
                     "training": config.get("training"), "val_metrics": config.get("val_metrics")})
    if path is not None:
        # The cache key (data hash / settings) identifies the extractor without naming this machine's folders.
        info["path"] = str(Path(path).resolve()) if absolute_paths else f"{Path(path).parent.name}/{Path(path).name}"
    info["from_cache"] = bool(getattr(extractor, "from_cache", False))
    return info


# -- the bank -------------------------------------------------------------------------------------
def bank_provenance(bank: Any, absolute_paths: bool = False) -> dict[str, Any]:
    """Who drew the bank and how: generator, checkpoint hash, sampler, seed, counts (from ``bank.json``
    and the first manifest row)."""
    from lightning_medaug.bank import manifest as mf

    info, settings = bank.info, bank.info["settings"]
    with open(bank.path / mf.MANIFEST_FILE, newline="", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle), None) or {}
    counts = bank.class_counts()
    return {
        "path": str(Path(bank.path).resolve()) if absolute_paths else Path(bank.path).resolve().name,
        "generator": settings.get("generator"), "generator_class": settings.get("generator_class"),
        "checkpoint_sha256": settings.get("checkpoint_sha256"),
        "sampler": first.get("sampler") or None, "steps": _number(first.get("steps")),
        "guidance": _number(first.get("guidance")), "sample_kwargs": settings.get("sample_kwargs") or {},
        "seed": settings.get("seed"), "dtype": settings.get("dtype"), "num_samples": len(bank),
        "image_shape": list(bank.image_shape), "num_classes": bank.num_classes,
        "label_counts": {str(c): int(n) for c, n in enumerate(counts)} if bank.num_classes else None,
        "masks": bank.has_masks, "library_version": info.get("library_version"), "created": info.get("created"),
    }


def _number(cell: str | None) -> int | float | str | None:
    """A manifest cell as a number when it is one (empty: ``None``)."""
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        return cell
    return int(value) if value.is_integer() else value


# -- privacy ------------------------------------------------------------------------------------
def read_privacy(path: str | Path, checkpoint_sha256: str | None) -> dict[str, Any]:
    """The ``privacy.json`` at ``path`` (the file, a generator folder or its run folder).

    When the folder holds the generator's ``model.safetensors`` (or ``generator/`` does), its
    SHA-256 must be the bank's checkpoint hash: a privacy report of another model would be wrong.
    """
    from lightning_medaug.generative.base import WEIGHTS_NAME
    from lightning_medaug.generative.privacy import EXPORT_FOLDER, load_privacy_report

    path = Path(path).expanduser()
    folder = path.parent if path.is_file() else path
    report = dict(load_privacy_report(folder))
    weights = next((w for w in (folder / WEIGHTS_NAME, folder / EXPORT_FOLDER / WEIGHTS_NAME) if w.is_file()), None)
    verified = False
    if weights is not None and checkpoint_sha256:
        if file_digest(weights) != checkpoint_sha256:
            raise ValueError(f"the privacy report in {folder} belongs to another generator: its {WEIGHTS_NAME} does "
                             "not have the bank's checkpoint SHA-256; pass the folder of the generator that drew "
                             "the bank")
        verified = True
    report["checkpoint_verified"] = verified
    return report


# -- no machine paths in reports -------------------------------------------------------------------
def scrub_paths(value: Any) -> Any:
    """A copy of ``value`` whose absolute (or ``~``) path strings are reduced to their last part."""
    if isinstance(value, Mapping):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_paths(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    return value
