"""A real data module built from a recipe's ``data`` section or a data config (YAML or dict).

Shared by the options of ``medaug generate`` that start from the user's real data (edits of its
training images, its geometry), so both read a recipe the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_data_module"]

#: Settings of a data section that do not change which images the training set holds.
_AUGMENTATION_ARGS = ("train_transforms",)


def load_data_module(config: str | Path | Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The data module of a recipe (its ``data`` section) or a data config (``class_path`` /
    ``init_args``), as a YAML file or a dict, built but not set up; also returns the data section used.

    A ``SyntheticMixDataModule`` is unwrapped to the real data module it holds, and training
    augmentation (``train_transforms``) is dropped: callers want the real images themselves.
    """
    if not isinstance(config, Mapping):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"data config {path} not found: pass a recipe with a 'data' section or a "
                                    "data config with class_path/init_args")
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = config.get("data", config) if isinstance(config, Mapping) else None
    while isinstance(section, Mapping) and isinstance(section.get("init_args", {}).get("datamodule"), Mapping):
        section = section["init_args"]["datamodule"]  # the real data inside a mixing wrapper
    if not isinstance(section, Mapping) or not isinstance(section.get("class_path"), str):
        raise ValueError("the data config needs a class_path (and init_args), at the top or under 'data', "
                         "e.g. class_path: lightning_medaug.data.MedMNISTDataModule")
    init_args = {k: v for k, v in dict(section.get("init_args") or {}).items() if k not in _AUGMENTATION_ARGS}
    section = {"class_path": section["class_path"], "init_args": init_args}
    module_name, _, class_name = section["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot import the data module {section['class_path']!r}: check its class_path") from None
    return cls(**init_args), section
