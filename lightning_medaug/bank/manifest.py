"""The on-disk layout of a synthetic bank and its records, written atomically.

::

    BANK/
      bank.json                          settings of the bank (written first, checked on resume)
      shards/shard-000000.images.npy     (n, C, *S) float16 | float32 | uint8, images in [-1, 1]
      shards/shard-000000.masks.npy      (n, 1, *S) uint8 {0, 1}, for mask-conditional generators
      shards/shard-000000.manifest.jsonl one row per sample, written after the shard's arrays
      manifest.csv                       every row, sorted by id, written once all shards exist
      scores.csv                         optional ``id,score`` table added later (e.g. by evaluation)
      image/000000.nii.gz, label/...     with ``--format nifti|mha|nrrd``: every sample as an image file
                                         with the bank's geometry (see :mod:`~.image_files`)

Manifest columns: ``id`` (the global sample index), ``shard``, ``index`` (row in the shard's
arrays, masks included), ``label`` (-1 for unconditional generators), ``mask_source`` (file name
of the source mask, never a path), ``generator`` (registry name), ``generator_class``,
``checkpoint_sha256`` (of ``model.safetensors``), ``seed`` (the shard's seed), ``sampler``,
``steps``, ``guidance`` (empty when the generator has none), ``library_version``, ``time`` (UTC,
ISO 8601) and ``shard_sha256`` (of the shard's images file followed by its masks file). Banks of
edits of real images add their provenance columns (:data:`~.edits.EDIT_COLUMNS`); banks written
with image files add ``image_file`` and ``mask_file``, paths relative to the bank folder. ``bank.json``
records the real data's ``geometry`` (spacing, origin, direction in SimpleITK (x, y[, z]) order)
when one was given, see :mod:`~.geometry`.

Shard ``k`` holds global sample indices ``[k * shard_size, (k + 1) * shard_size)``; a sample's
``id`` is its global index. A shard is complete iff its manifest file exists with one row per
sample: every file is written to a temporary name, flushed to disk and renamed, so a killed run
leaves either a complete shard or files that the next run deletes and rewrites.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["COLUMNS", "BANK_FILE", "MANIFEST_FILE", "SCORES_FILE", "SHARD_DIR", "ShardFiles", "shard_files",
           "shard_range", "num_shards", "atomic_write_text", "fsync_file", "read_bank_info", "write_bank_info",
           "settings_mismatch", "write_shard_rows", "read_shard_rows", "shard_complete", "write_manifest_csv",
           "read_manifest_columns", "list_shard_files", "csv_header", "read_shard_digests"]

BANK_FILE = "bank.json"
MANIFEST_FILE = "manifest.csv"
SCORES_FILE = "scores.csv"
SHARD_DIR = "shards"
FORMAT_VERSION = 1

#: Columns of every manifest row, in order.
COLUMNS = ("id", "shard", "index", "label", "mask_source", "generator", "generator_class", "checkpoint_sha256",
           "seed", "sampler", "steps", "guidance", "library_version", "time", "shard_sha256")

_SHARD_NAME = re.compile(r"shard-(\d{6,})\.(images\.npy|masks\.npy|manifest\.jsonl)$")


class ShardFiles(NamedTuple):
    images: Path
    masks: Path
    manifest: Path


def shard_files(root: str | Path, shard: int) -> ShardFiles:
    stem = Path(root) / SHARD_DIR / f"shard-{shard:06d}"
    return ShardFiles(stem.with_name(stem.name + ".images.npy"), stem.with_name(stem.name + ".masks.npy"),
                      stem.with_name(stem.name + ".manifest.jsonl"))


def num_shards(num_samples: int, shard_size: int) -> int:
    return -(-num_samples // shard_size)


def shard_range(shard: int, num_samples: int, shard_size: int) -> range:
    """Global sample indices held by ``shard``."""
    return range(shard * shard_size, min(num_samples, (shard + 1) * shard_size))


def list_shard_files(root: str | Path) -> dict[int, list[Path]]:
    """Shard files present under ``root/shards`` (temporary files excluded), by shard index."""
    found: dict[int, list[Path]] = {}
    folder = Path(root) / SHARD_DIR
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            match = _SHARD_NAME.fullmatch(entry.name)
            if match:
                found.setdefault(int(match.group(1)), []).append(entry)
    return found


# -- atomic writing --------------------------------------------------------------------------------
def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk too; not every platform can open a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``final`` (atomic on POSIX and Windows)."""
    fsync_file(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = temporary(path)
    tmp.write_text(text, encoding="utf-8")
    commit(tmp, path)


# -- bank.json -------------------------------------------------------------------------------------
def write_bank_info(root: Path, settings: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    info = {"format": FORMAT_VERSION, "settings": dict(settings), **extra}
    atomic_write_text(root / BANK_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def read_bank_info(root: str | Path) -> dict[str, Any]:
    path = Path(root) / BANK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a synthetic bank (write one with `medaug generate`)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        for key in ("num_samples", "shard_size", "image_shape", "num_classes", "dtype"):
            info["settings"][key]  # noqa: B018  (a KeyError names what is missing)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a bank description ({err!r}); delete the folder and generate again") from None
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has bank format {info.get('format')!r}; this library reads format {FORMAT_VERSION}")
    return info


def settings_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two banks' settings (empty when they agree)."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples and lists compare alike
    diffs = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            before, after = json.dumps(old.get(key), sort_keys=True), json.dumps(new.get(key), sort_keys=True)
            diffs.append(f"{key}: {before[:60]} -> {after[:60]}")
    return diffs


# -- per-shard rows --------------------------------------------------------------------------------
def write_shard_rows(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> None:
    """Write a shard's rows as JSON lines, atomically: the shard's completion marker."""
    atomic_write_text(path, "".join(json.dumps({c: row[c] for c in columns}) + "\n" for row in rows))


def read_shard_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def shard_complete(root: Path, shard: int, expected_rows: int, has_masks: bool = False) -> bool:
    """True when the shard's manifest exists with ``expected_rows`` readable rows and its arrays exist."""
    files = shard_files(root, shard)
    if not (files.manifest.is_file() and files.images.is_file() and (files.masks.is_file() or not has_masks)):
        return False
    try:
        return len(read_shard_rows(files.manifest)) == expected_rows
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


# -- manifest.csv ----------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    return "" if value is None else value


def write_manifest_csv(root: Path, shards: int, columns: Sequence[str] = COLUMNS) -> int:
    """Concatenate the shards' rows (already in id order) into ``manifest.csv``; returns the row count."""
    path = root / MANIFEST_FILE
    tmp = temporary(path)
    count = 0
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for shard in range(shards):
            rows = read_shard_rows(shard_files(root, shard).manifest)
            writer.writerows([_cell(row[c]) for c in columns] for row in sorted(rows, key=lambda r: r["id"]))
            count += len(rows)
    commit(tmp, path)
    return count


def _csv_rows(path: Path) -> Iterator[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        yield from csv.reader(handle)


def read_manifest_columns(path: Path, int_columns: tuple[str, ...],
                          float_columns: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Selected columns of a CSV table as compact numpy arrays (int64 / float64, empty -> NaN).

    Parsed by numpy's C reader, so a million-row manifest costs seconds and a few tens of MB,
    not Python objects per row.
    """
    header = csv_header(path)
    if not header:
        raise ValueError(f"{path} is empty: no header row")
    missing = [c for c in int_columns + float_columns if c not in header]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r} (columns: {', '.join(header)})")
    result: dict[str, np.ndarray] = {}
    for names, dtype in ((int_columns, np.int64), (float_columns, np.float64)):
        if not names:
            continue
        positions = [header.index(c) for c in names]
        converters = (lambda cell: float(cell) if cell.strip() else np.nan) if dtype is np.float64 else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a header-only table is an empty result
                table = np.loadtxt(path, delimiter=",", quotechar='"', skiprows=1, usecols=positions, dtype=dtype,
                                   converters=converters, ndmin=2, encoding="utf-8")
        except ValueError as err:
            raise ValueError(f"{path} is malformed: {str(err).splitlines()[0]}") from None
        result.update({name: np.ascontiguousarray(table[:, i]) for i, name in enumerate(names)})
    return result


def csv_header(path: Path) -> list[str]:
    return next(_csv_rows(path), [])


def read_shard_digests(path: Path) -> dict[int, str]:
    """``shard -> shard_sha256`` from a manifest; ValueError when one shard's rows disagree."""
    rows = _csv_rows(path)
    header = next(rows, [])
    if "shard" not in header or "shard_sha256" not in header:
        raise ValueError(f"{path} has no shard_sha256 column: it was not written by write_bank")
    shard_pos, digest_pos = header.index("shard"), header.index("shard_sha256")
    digests: dict[int, str] = {}
    for row in rows:
        shard, digest = int(row[shard_pos]), row[digest_pos]
        if digests.setdefault(shard, digest) != digest:
            raise ValueError(f"{path}: the rows of shard {shard} disagree on its SHA-256; the manifest was edited")
    return digests
