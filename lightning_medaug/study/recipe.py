"""Recipes as data: load a YAML recipe, derive a variant (subset, mixing, epochs), run it.

The demo and the study never assemble models themselves: they edit a recipe (a plain dict of
LightningCLI ``class_path`` / ``init_args``), write it into the run folder as ``recipe.yaml``
and run it with :class:`~lightning_medaug.trainer_cli.MedaugCLI`, so every figure they report comes with
the exact input that reproduces it (``medaug fit --config <folder>/recipe.yaml``).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from lightning_medaug.recipe_files import MIX_CLASS, find_recipe

__all__ = ["AUGMENTATIONS", "MIX_CLASS", "find_recipe", "load_recipe", "real_data", "run_recipe",
           "with_augmentation", "with_classic_augmentation", "with_mixing", "with_subset", "with_trainer"]

AUGMENTATION_CLASS = "lightning_medaug.data.ClassicAugmentation"
POLICY_CLASS = "lightning_medaug.data.PolicyAugmentation"

#: Augmentation baselines selectable by name (:func:`with_augmentation`): per-sample ones are the real
#: data's ``train_transforms``, batch-level ones (MixUp, CutMix) the classifier's ``batch_augmentation``.
AUGMENTATIONS = ("none", "classic", "trivialaugment", "randaugment", "mixup", "cutmix", "classic_distort")

#: ``classic_distort``: the classic augmentation plus a grid distortion (image and mask alike), the
#: non-rigid warp segmentation baselines add (e.g. U-Net's elastic deformations on EM images).
CLASSIC_DISTORT = {"distort_prob": 0.5, "distort_cells": 5, "distort_limit": 0.1}


def load_recipe(name: str | Path) -> dict[str, Any]:
    """The recipe as a dict; it must have ``model`` and ``data`` sections."""
    path = find_recipe(name)
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for section in ("model", "data"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"recipe {path} has no '{section}' section with class_path/init_args")
    return config


def real_data(config: dict[str, Any]) -> dict[str, Any]:
    """The real-data ``init_args`` of a recipe (inside ``SyntheticMixDataModule`` if it is one)."""
    data = config["data"]
    while data.get("class_path") == MIX_CLASS:
        data = data["init_args"]["datamodule"]
    return data.setdefault("init_args", {})


def with_subset(config: dict[str, Any], fraction: float, seed: int) -> dict[str, Any]:
    """A copy training on a seeded, stratified ``fraction`` of the real training split (1 = all)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a training fraction must be in (0, 1], got {fraction}")
    config = copy.deepcopy(config)
    args = real_data(config)
    args["subset"] = None if fraction == 1 else float(fraction)
    args["subset_seed"] = int(seed)
    return config


def with_classic_augmentation(config: dict[str, Any], spatial_dims: int = 2, **kwargs: Any) -> dict[str, Any]:
    """A copy whose real training samples pass through :class:`~lightning_medaug.data.ClassicAugmentation`."""
    config = copy.deepcopy(config)
    real_data(config)["train_transforms"] = {"class_path": AUGMENTATION_CLASS,
                                             "init_args": {"spatial_dims": spatial_dims, **kwargs}}
    return config


def with_augmentation(config: dict[str, Any], name: str, spatial_dims: int = 2, **kwargs: Any) -> dict[str, Any]:
    """A copy training with the augmentation baseline ``name`` (one of :data:`AUGMENTATIONS`) and no other.

    ``classic``: :class:`~lightning_medaug.data.ClassicAugmentation` (``classic_distort``: with
    :data:`CLASSIC_DISTORT`, 2D and 3D, masks too); ``trivialaugment`` / ``randaugment``:
    :class:`~lightning_medaug.data.PolicyAugmentation` (2D); ``mixup`` / ``cutmix``: the
    ``ClassificationTask``'s ``batch_augmentation``; ``none``: neither. ``kwargs`` go to the chosen one
    (``mix_alpha`` for the batch-level ones).
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    config = copy.deepcopy(config)
    data, model = real_data(config), config["model"].setdefault("init_args", {})
    data.pop("train_transforms", None)
    model.pop("batch_augmentation", None)
    if name == "classic":
        return with_classic_augmentation(config, spatial_dims, **kwargs)
    if name == "classic_distort":
        return with_classic_augmentation(config, spatial_dims, **{**CLASSIC_DISTORT, **kwargs})
    if name in ("trivialaugment", "randaugment"):
        data["train_transforms"] = {"class_path": POLICY_CLASS,
                                    "init_args": {"policy": name, "spatial_dims": spatial_dims, **kwargs}}
    elif name in ("mixup", "cutmix"):
        if not str(config["model"].get("class_path", "")).endswith("ClassificationTask"):
            raise ValueError(f"augmentation {name!r} mixes labels of a ClassificationTask; the recipe's model is "
                             f"{config['model'].get('class_path')!r}")
        model.update(batch_augmentation=name, **kwargs)
    return config


def with_mixing(config: dict[str, Any], bank: str | Path, ratio: float, mode: str = "add", seed: int = 0,
                **kwargs: Any) -> dict[str, Any]:
    """A copy whose data module is wrapped in ``SyntheticMixDataModule`` drawing from ``bank``."""
    config = copy.deepcopy(config)
    config["data"] = {"class_path": MIX_CLASS, "init_args": {
        "datamodule": config["data"], "bank": str(bank), "ratio": float(ratio), "mode": mode, "seed": int(seed),
        **kwargs}}
    return config


def with_trainer(config: dict[str, Any], seed: int | None = None, **trainer: Any) -> dict[str, Any]:
    """A copy with ``seed_everything`` and trainer arguments (e.g. ``max_epochs``) replaced."""
    config = copy.deepcopy(config)
    if seed is not None:
        config["seed_everything"] = int(seed)
    config.setdefault("trainer", {}).update(trainer)
    return config


def run_recipe(config: dict[str, Any], folder: str | Path, test: bool = True) -> dict[str, Any]:
    """Fit ``config`` with its logs in ``folder``, then test the best checkpoint; returns the module,
    the data module and the run's ``metrics.json`` (under ``"metrics"``).

    Generators are exported to ``folder/generator`` as ``medaug fit`` does.
    """
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from lightning_medaug.trainer_cli import MedaugCLI

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = with_trainer(config, logger={"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"save_dir": str(folder.parent), "name": "",
                                                        "version": folder.name}})
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    with warnings.catch_warnings():
        # the study's own command line is in sys.argv; the recipe file is this run's only input
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = MedaugCLI(args=["--config", str(path)], run=False)
    cli.check()
    with warnings.catch_warnings():
        if [p.name for p in folder.iterdir()] == [path.name]:
            # the CSV logger warns of a non-empty folder "whose log files will be deleted"; here it
            # holds only the recipe just written, which the logger leaves alone
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.after_fit()
    if test and is_overridden("test_step", cli.model):
        ckpt = "best" if getattr(cli.trainer.checkpoint_callback, "best_model_path", "") else None
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    return {"model": cli.model, "datamodule": cli.datamodule, "metrics": metrics}
