"""Shared helpers for benchmark scripts: data location, versions, one-line JSON output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def data_root(cli_value: str | None) -> str | None:
    """``--data-root`` if given, else ``$MEDAUG_DATA``, else None (the package's shipped copy)."""
    return cli_value or os.environ.get("MEDAUG_DATA") or None


def versions() -> dict[str, str]:
    """Versions that make a figure reproducible."""
    import lightning
    import torch

    import lightning_medaug

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "lightning_medaug": lightning_medaug.__version__, "threads": str(torch.get_num_threads())}


def emit(record: dict[str, Any], out: str | None = None) -> None:
    """Print the benchmark's one JSON line (and append it to ``out`` when given)."""
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


