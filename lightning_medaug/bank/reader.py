"""Reading a synthetic bank as a map-style torch ``Dataset``, straight from its shard files.

Only a few compact numpy index arrays live in memory (shard, offset, label, id: ~24 bytes per
sample); image rows are read on demand with positioned reads (``os.pread``) from shard files
opened on first access in each process, so the dataset pickles cheaply into ``DataLoader``
workers. Positioned reads, not memory maps: every page a map touches (and the kernel's
fault-around neighbours, ~100 kB per random row) stays in the process's resident memory, so
random reads from a million-sample bank grew a training process by ~0.6 GB an epoch, while a
read copies just the row out of the page cache. Platforms without ``os.pread`` use memory maps.

Quality scores (e.g. written by the evaluation code) are read from ``scores.csv`` in the bank
folder (columns ``id`` and ``score_column``) when it exists, else from a ``score_column`` column
of ``manifest.csv``; samples without a score fail any ``min_score`` filter.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.bank import manifest as mf
from lightning_medaug.data.imageio import Geometry
from lightning_medaug.hashing import file_digest

__all__ = ["SyntheticBank"]



def _max_open_shards() -> int:
    """Shard files kept open at once per process: each holds a file descriptor, so stay
    well under the process's limit (a quarter of it, at most 1024)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 128
    return 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 4))


MAX_OPEN_SHARDS = _max_open_shards()

_REWRITE = "rerun `medaug generate` with the bank's arguments to rewrite that shard"
_REBUILD = "delete manifest.csv and rerun `medaug generate` with the bank's arguments to rebuild it"


class SyntheticBank(Dataset):
    """The samples of a bank written by :func:`~lightning_medaug.bank.write_bank` (``medaug generate``).

    Items follow the library's batch convention: ``{"image": float32 (C, *S) in [-1, 1],
    "label": int64 scalar, "mask": float32 (1, *S) in {0, 1}}``; ``label`` is left out for
    unconditional generators and ``mask`` for banks without masks.

    Args:
        path: the bank folder.
        labels: keep only samples of these classes.
        min_score: keep only samples whose score is at least this (see the module docstring).
        score_column: name of the score column in ``scores.csv`` / ``manifest.csv``.
        verify: check on open that the manifest and the shard files agree with ``bank.json``
            (row counts, ids, array shapes and dtypes, no missing or extra shard); costs one
            header read per shard. :meth:`verify_hashes` also checks the bytes.
    """

    def __init__(self, path: str | Path, labels: Sequence[int] | None = None, min_score: float | None = None,
                 score_column: str = "score", verify: bool = True):
        self.path = Path(path)
        self._info = mf.read_bank_info(self.path)
        settings = self._info["settings"]
        self._image_shape = tuple(int(d) for d in settings["image_shape"])
        self._num_classes = int(settings["num_classes"])
        self._has_masks = settings.get("masks") is not None
        self._dtype = np.dtype(settings["dtype"])
        manifest_path = self.path / mf.MANIFEST_FILE
        if not manifest_path.is_file():
            raise ValueError(f"{self.path} is incomplete (no {mf.MANIFEST_FILE}): rerun `medaug generate` with the "
                             "same arguments to finish it")
        columns = mf.read_manifest_columns(manifest_path, ("id", "shard", "index", "label"))
        if verify:
            self._verify(columns, settings)
        score = self._read_scores(columns["id"], score_column)
        keep = self._filter(columns["label"], score, labels, min_score, score_column)
        self._keep = keep
        self._id = columns["id"][keep]
        self._shard = columns["shard"][keep].astype(np.int32)
        self._offset = columns["index"][keep].astype(np.int32)
        self._label = columns["label"][keep]
        self._score = None if score is None else score[keep]
        self._maps: OrderedDict[int, tuple[_ShardFile, _ShardFile | None]] = OrderedDict()

    # -- opening -----------------------------------------------------------------------------------
    def _verify(self, columns: dict[str, np.ndarray], settings: dict[str, Any]) -> None:
        n, size = int(settings["num_samples"]), int(settings["shard_size"])
        total = mf.num_shards(n, size)
        shard, index, ids = columns["shard"], columns["index"], columns["id"]
        counts = np.bincount(shard.clip(0), minlength=total) if len(shard) else np.zeros(total, dtype=np.int64)
        expected = [len(mf.shard_range(k, n, size)) for k in range(total)]
        for k in range(max(total, len(counts))):
            have, want = (counts[k] if k < len(counts) else 0), (expected[k] if k < total else 0)
            if have != want:
                raise ValueError(f"{self.path / mf.MANIFEST_FILE} lists {have} rows of shard {k}, bank.json implies "
                                 f"{want}: it is truncated or mixed; {_REBUILD}")
        if shard.min(initial=0) < 0 or not np.array_equal(ids, shard.astype(np.int64) * size + index) \
                or not np.array_equal(np.sort(ids), np.arange(n)):
            raise ValueError(f"{self.path / mf.MANIFEST_FILE} has ids that do not match their shard and index, or "
                             f"repeat: it was edited; {_REBUILD}")
        labels = columns["label"]
        low = -1 if self._num_classes == 0 else 0
        if len(labels) and (labels.min() < low or labels.max() >= max(self._num_classes, 1)):
            raise ValueError(f"{self.path / mf.MANIFEST_FILE} holds labels outside [{low}, {self._num_classes - 1}]: "
                             f"it was edited; {_REBUILD}")
        extra = sorted(set(mf.list_shard_files(self.path)) - set(range(total)))
        if extra:
            raise ValueError(f"{self.path / mf.SHARD_DIR} holds shard {extra[0]} that the bank does not list; "
                             "remove it (another bank's files?)")
        for k in range(total):
            self._check_array(mf.shard_files(self.path, k).images, (expected[k], *self._image_shape), self._dtype)
            masks = mf.shard_files(self.path, k).masks
            if self._has_masks:
                self._check_array(masks, (expected[k], 1, *self._image_shape[1:]), np.dtype(np.uint8))
            elif masks.exists():
                raise ValueError(f"{masks} exists but the bank has no masks; remove it")

    @staticmethod
    def _check_array(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if not path.is_file():
            raise ValueError(f"shard file {path} is missing; {_REWRITE}")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise ValueError(f"shard file {path} is unreadable ({err}); delete it, then {_REWRITE}") from None
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(f"shard file {path} holds {array.dtype} {array.shape}, bank.json implies {dtype} {shape}; "
                             f"delete it, then {_REWRITE}")

    def _read_scores(self, ids: np.ndarray, column: str) -> np.ndarray | None:
        scores_path, manifest_path = self.path / mf.SCORES_FILE, self.path / mf.MANIFEST_FILE
        if scores_path.is_file():
            table = mf.read_manifest_columns(scores_path, ("id",), (column,))
            order = np.argsort(ids, kind="stable")
            pos = np.searchsorted(ids[order], table["id"]).clip(0, max(len(ids) - 1, 0))
            found = len(ids) > 0 and ids[order][pos] == table["id"]
            if not np.all(found) or len(np.unique(table["id"])) != len(table["id"]):
                raise ValueError(f"{scores_path} names ids that are not in the bank, or repeats one; "
                                 "rewrite it for this bank")
            score = np.full(len(ids), np.nan)
            score[order[pos]] = table[column]
            return score
        if column in mf.csv_header(manifest_path):
            return mf.read_manifest_columns(manifest_path, (), (column,))[column]
        return None

    def _filter(self, label: np.ndarray, score: np.ndarray | None, labels: Sequence[int] | None,
                min_score: float | None, score_column: str) -> np.ndarray:
        keep = np.ones(len(label), dtype=bool)
        if labels is not None:
            wanted = np.asarray(list(labels), dtype=np.int64)
            if self._num_classes == 0:
                raise ValueError(f"{self.path} comes from an unconditional generator: it has no labels to filter on")
            bad = wanted[(wanted < 0) | (wanted >= self._num_classes)]
            if len(bad):
                raise ValueError(f"labels {bad.tolist()} are not classes of {self.path} (0..{self._num_classes - 1})")
            keep &= np.isin(label, wanted)
        if min_score is not None:
            if score is None:
                raise ValueError(f"min_score needs scores: add {mf.SCORES_FILE} (id,{score_column}) to {self.path} "
                                 f"or a {score_column!r} column to its manifest")
            keep &= score >= min_score  # NaN (no score) is never kept
        if not keep.any():
            what = f" after filtering (labels={labels}, min_score={min_score})" if len(label) else ""
            raise ValueError(f"{self.path} holds no sample{what}; loosen the filters or write a larger bank")
        return keep

    # -- the Dataset -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._id)

    def _files(self, shard: int) -> tuple[_ShardFile, _ShardFile | None]:
        files = self._maps
        opened = files.get(shard)
        if opened is not None:
            files.move_to_end(shard)
            return opened
        paths = mf.shard_files(self.path, shard)
        opened = (_ShardFile(paths.images), _ShardFile(paths.masks) if self._has_masks else None)
        files[shard] = opened
        if len(files) > MAX_OPEN_SHARDS:
            files.popitem(last=False)  # its descriptors close when the last reference goes
        return opened

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a bank of {len(self)} samples")
        return self.__getitems__([index])[0]

    def read(self, indices: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """Many samples at once, stacked: ``{"image": (B, C, *S), "label": (B,), "mask": (B, 1, *S)}``,
        the same values as ``__getitem__`` gives one by one, with one positioned read per row and
        one dtype conversion per batch instead of per-sample tensor work."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = np.empty((len(index), *self._image_shape), dtype=np.float32)
        masks = np.empty((len(index), 1, *self._image_shape[1:]), dtype=np.float32) if self._has_masks else None
        if len(index):
            shards, offsets = self._shard[index].tolist(), self._offset[index].tolist()
            opened = {k: self._files(k) for k in dict.fromkeys(shards)}  # each shard once, in LRU order
            # float16/uint8 -> float32 in the assignment, once for the whole batch.
            images[...] = _ShardFile.gather([opened[k][0] for k in shards], offsets)
            if masks is not None:
                masks[...] = _ShardFile.gather([opened[k][1] for k in shards], offsets)
        image = torch.from_numpy(images)
        if self._dtype == np.uint8:
            image = image / 127.5 - 1.0
        batch = {"image": image}
        if self._num_classes > 0:
            batch["label"] = torch.from_numpy(np.ascontiguousarray(self._label[index], dtype=np.int64))
        if masks is not None:
            batch["mask"] = torch.from_numpy(masks)
        return batch

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Tensor]]:
        """Per-sample dicts of :meth:`read` (torch's DataLoader calls this for a whole batch)."""
        return _unstack(self.read(indices), len(indices))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()  # open files are reopened lazily in each worker
        return state

    # -- what the bank holds ------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """``bank.json``: generator, checkpoint hash, label plan, sampler settings, seed, version."""
        return self._info

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self._image_shape

    @property
    def spatial_dims(self) -> int:
        return len(self._image_shape) - 1

    @property
    def in_channels(self) -> int:
        return self._image_shape[0]

    @property
    def image_size(self) -> int | tuple[int, ...]:
        """The side of every spatial axis, or one per axis when they differ (non-square images)."""
        spatial = tuple(self._image_shape[1:])
        return spatial[0] if len(set(spatial)) == 1 else spatial

    @property
    def geometry(self) -> Geometry | None:
        """Spacing, origin and direction of the real data the bank imitates (SimpleITK (x, y[, z])
        order, the reverse of the array axes), as ``medaug generate --geometry-from`` recorded them;
        ``None`` when none was given."""
        record = self._info["settings"].get("geometry")
        return None if record is None else Geometry.from_dict(self._image_shape[1:], record)

    @property
    def file_format(self) -> str | None:
        """``"nifti"``, ``"mha"`` or ``"nrrd"`` when every sample is also an image file (its path in the
        ``image_file`` column of ``manifest.csv``), else ``None``."""
        files = self._info["settings"].get("files")
        return None if files is None else files["format"]

    @property
    def num_classes(self) -> int:
        """The generator's class count (0 for an unconditional generator)."""
        return self._num_classes

    @property
    def has_masks(self) -> bool:
        return self._has_masks

    @property
    def labels(self) -> np.ndarray:
        """int64 label of every kept sample (-1 for an unconditional generator)."""
        return self._label

    @property
    def ids(self) -> np.ndarray:
        return self._id

    @property
    def scores(self) -> np.ndarray | None:
        return self._score

    @property
    def manifest(self) -> dict[str, np.ndarray]:
        """The kept samples' manifest columns ``id``, ``shard``, ``index``, ``label`` (+ ``score``);
        the full rows (generator, seeds, times) are in ``manifest.csv``."""
        table = {"id": self._id, "shard": self._shard, "index": self._offset, "label": self._label}
        if self._score is not None:
            table["score"] = self._score
        return table

    def column(self, name: str) -> np.ndarray | None:
        """A numeric manifest column (e.g. ``parent_index`` of a bank of edits) for the kept samples,
        as float64; None when the manifest has no such column."""
        manifest_path = self.path / mf.MANIFEST_FILE
        if name not in mf.csv_header(manifest_path):
            return None
        return mf.read_manifest_columns(manifest_path, (), (name,))[name][self._keep]

    def class_counts(self) -> np.ndarray:
        """Kept samples per class (length ``num_classes``)."""
        return np.bincount(self._label[self._label >= 0], minlength=self._num_classes)

    def verify_hashes(self) -> int:
        """Check every shard's bytes against the SHA-256 in the manifest; returns the shard count."""
        digests = mf.read_shard_digests(self.path / mf.MANIFEST_FILE)
        for shard, digest in sorted(digests.items()):
            files = mf.shard_files(self.path, shard)
            actual = file_digest([files.images, files.masks] if self._has_masks else [files.images])
            if actual != digest:
                raise ValueError(f"shard {shard} of {self.path} does not match its SHA-256: its files were changed "
                                 "or damaged; delete its manifest and rerun `medaug generate` to rewrite it")
        return len(digests)

    def __repr__(self) -> str:
        return (f"SyntheticBank({str(self.path)!r}, samples={len(self)}, image_shape={self._image_shape}, "
                f"num_classes={self._num_classes}, masks={self._has_masks})")


def _unstack(batch: dict[str, Tensor], size: int) -> list[dict[str, Tensor]]:
    """``{key: (B, ...)}`` -> B dicts of ``{key: (...)}`` (views into the batch tensors)."""
    keys = list(batch)
    columns = [batch[k].unbind(0) for k in keys]
    return [dict(zip(keys, row)) for row in zip(*columns)] if columns else [{} for _ in range(size)]


class _ShardFile:
    """Rows of one ``.npy`` shard file, read with ``os.pread``: positioned reads share no file
    offset, so forked ``DataLoader`` workers can use the inherited descriptor safely."""

    def __init__(self, path: Path):
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, fortran_order, self.dtype = read_header(fh)
            self.start = fh.tell()
        if fortran_order and len(shape) > 1:
            raise ValueError(f"shard file {path} is stored in Fortran order; rewrite it with `medaug generate`")
        self.path, self.row_shape = path, tuple(shape[1:])
        self.row_bytes = self.dtype.itemsize * prod(self.row_shape)
        self.fd: int | None = None
        self.map: np.ndarray | None = None
        if hasattr(os, "pread"):
            self.fd = os.open(path, os.O_RDONLY)
        else:
            self.map = np.load(path, mmap_mode="r")

    @staticmethod
    def gather(files: list[_ShardFile], offsets: list[int]) -> np.ndarray:
        """Row ``offsets[i]`` of ``files[i]`` for every ``i``, stacked, in the stored dtype (the files
        of one bank share dtype and row shape). One ``pread`` per row, no per-shard grouping."""
        first = files[0]
        if first.fd is None:
            return np.stack([f.map[o] for f, o in zip(files, offsets)])
        size = first.row_bytes
        data = b"".join([os.pread(f.fd, size, f.start + size * o) for f, o in zip(files, offsets)])
        if len(data) != size * len(offsets):
            raise ValueError(f"a shard file of {first.path.parent} is shorter than its header says: it was "
                             f"truncated; {_REWRITE}")
        return np.frombuffer(data, dtype=first.dtype).reshape(len(offsets), *first.row_shape)

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
