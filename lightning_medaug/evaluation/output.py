"""The report folder, written all at once: a crash leaves the previous report (or nothing), never half
of one.

Everything is written into a hidden staging folder beside ``--out`` (same file system), which
then replaces ``--out`` by renames. A folder that holds other files is refused unless the user
asks to overwrite, and then only the report's own files are replaced in it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["METRICS_FILE", "REPORT_KIND", "check_output_folder", "is_previous_report", "staged_output"]

#: ``metrics.json["kind"]`` of a report written by ``medaug evaluate``.
REPORT_KIND = "medaug-evaluate"
METRICS_FILE = "metrics.json"


def is_previous_report(folder: str | Path) -> bool:
    """True when ``folder/metrics.json`` was written by ``medaug evaluate``."""
    path = Path(folder) / METRICS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == REPORT_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(out: str | Path, overwrite: bool = False) -> bool:
    """Raise unless ``out`` may take a report; returns whether the whole folder can be replaced
    (absent, empty or an earlier report) rather than only the report's files in it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the report")
    if not out.exists() or not any(out.iterdir()) or is_previous_report(out):
        return True
    if not overwrite:
        raise ValueError(f"--out {out} is not empty and holds no earlier `medaug evaluate` report; choose a new "
                         "folder, or pass --overwrite to write the report's files into it")
    return False


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files become ``out``, on error it is removed."""
    out = Path(os.path.abspath(out))
    replace_whole = check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run of this process id
    staging.mkdir()
    try:
        yield staging
        _commit(staging, out, replace_whole)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, out: Path, replace_whole: bool) -> None:
    if replace_whole:
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
        return
    # Into a folder the user asked to overwrite: file by file, metrics.json last (it marks the report).
    files = sorted(staging.iterdir(), key=lambda p: p.name == METRICS_FILE)
    for path in files:
        target = out / path.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(path, target)
