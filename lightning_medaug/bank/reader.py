"""Reading a synthetic bank as a map-style torch ``Dataset``, memory-mapped shard by shard.

Only a few compact numpy index arrays live in memory (shard, offset, label, id: ~24 bytes per
sample); images are read from ``np.load(mmap_mode="r")`` views opened on first access in each
process, so the dataset pickles cheaply into ``DataLoader`` workers.

Quality scores (e.g. written by the evaluation code) are read from ``scores.csv`` in the bank
folder (columns ``id`` and ``score_column``) when it exists, else from a ``score_column`` column
of ``manifest.csv``; samples without a score fail any ``min_score`` filter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.bank import manifest as mf

__all__ = ["SyntheticBank"]



def _max_open_shards() -> int:
    """Shards kept memory-mapped at once per process: each map holds a file descriptor, so stay
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
        self._id = columns["id"][keep]
        self._shard = columns["shard"][keep].astype(np.int32)
        self._offset = columns["index"][keep].astype(np.int32)
        self._label = columns["label"][keep]
        self._score = None if score is None else score[keep]
        self._maps: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()

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

    def _arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray | None]:
        maps = self._maps
        if shard in maps:
            maps.move_to_end(shard)
            return maps[shard]
        files = mf.shard_files(self.path, shard)
        masks = np.load(files.masks, mmap_mode="r") if self._has_masks else None
        opened = (np.load(files.images, mmap_mode="r"), masks)
        maps[shard] = opened
        if len(maps) > MAX_OPEN_SHARDS:
            maps.popitem(last=False)
        return opened

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        images, masks = self._arrays(int(self._shard[index]))
        offset = int(self._offset[index])
        image = torch.from_numpy(np.array(images[offset], dtype=np.float32))
        if self._dtype == np.uint8:
            image = image / 127.5 - 1.0
        item = {"image": image}
        if self._num_classes > 0:
            item["label"] = torch.tensor(int(self._label[index]), dtype=torch.int64)
        if masks is not None:
            item["mask"] = torch.from_numpy(np.array(masks[offset], dtype=np.float32))
        return item

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened lazily in each worker process instead of being pickled.
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
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
    def image_size(self) -> int:
        return self._image_shape[1]

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

    def class_counts(self) -> np.ndarray:
        """Kept samples per class (length ``num_classes``)."""
        return np.bincount(self._label[self._label >= 0], minlength=self._num_classes)

    def verify_hashes(self) -> int:
        """Check every shard's bytes against the SHA-256 in the manifest; returns the shard count."""
        digests = mf.read_shard_digests(self.path / mf.MANIFEST_FILE)
        for shard, digest in sorted(digests.items()):
            files = mf.shard_files(self.path, shard)
            actual = mf.sha256_files([files.images, files.masks] if self._has_masks else [files.images])
            if actual != digest:
                raise ValueError(f"shard {shard} of {self.path} does not match its SHA-256: its files were changed "
                                 "or damaged; delete its manifest and rerun `medaug generate` to rewrite it")
        return len(digests)

    def __repr__(self) -> str:
        return (f"SyntheticBank({str(self.path)!r}, samples={len(self)}, image_shape={self._image_shape}, "
                f"num_classes={self._num_classes}, masks={self._has_masks})")
