"""The one writer of a weights folder: ``config.json`` + ``model.safetensors``, written atomically.

Generators (``save_pretrained``) and feature extractors (``save_feature_extractor``) both save as
such a folder, in the layout diffusers uses. Each file is written under a temporary name and
renamed into place, so a crash leaves the previous file or none, never a half-written one; the
weights go first, so a ``config.json`` never names weights that are not there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "write_weights_folder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def write_weights_folder(folder: str | Path, config: Mapping[str, Any], state: Mapping[str, Tensor],
                         metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state`` (detached, contiguous CPU copies are taken) and ``config`` into ``folder``.

    ``metadata`` goes into the safetensors header (string values only, as the format requires).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp_weights = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp_weights), metadata=dict(metadata or {}))
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    tmp_config = folder / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(dict(config), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp_config, folder / CONFIG_NAME)
    return folder
