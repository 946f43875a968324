"""Banks of diffusion edits of real training images, with their provenance.

A bank of edits holds, for every real training image (cycled when more samples are asked for), an
edit by a trained diffusion model's :meth:`~lightning_medaug.generative.editing.DiffusionEditing.edit`
at one strength, guided to the image's own class (DA-Fusion) or to a target class (Diff-Mix
counterfactuals). It is written, sharded, resumed and read like any synthetic bank; its manifest adds
per sample (:data:`EDIT_COLUMNS`):

* ``parent_index``: index of the edited image in the real training set (the data module's
  ``train_dataloader().dataset``, in its order);
* ``parent_sha256``: SHA-256 of that image as the data module yields it (float32 bytes), so a
  changed data set or order is caught;
* ``strength``: the edit strength;
* ``source_label``: the parent's class (-1 when the data has none); the ``label`` column is the
  class the edit was guided to;
* ``soft_label``: the Diff-Mix soft label as a JSON list (one-hot for an edit to its own class;
  empty for unconditional models), see :func:`~lightning_medaug.generative.editing.soft_labels`.

Segmentation data: when the training samples carry masks, each edit keeps its parent's mask (the
image is edited, the mask is not), stored beside the image like the masks of any bank of pairs, so
an edit trains a segmenter as an (image, mask) pair; a mask-conditional model is also conditioned on
that mask while it edits, which keeps the edited anatomy on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from lightning_medaug.bank.conditions import check_sample_kwargs
from lightning_medaug.bank.data_config import load_data_module
from lightning_medaug.bank.distributed import rank_context
from lightning_medaug.bank.geometry import GeometryLike
from lightning_medaug.bank.manifest import COLUMNS
from lightning_medaug.bank.plan import parse_class_map
from lightning_medaug.bank.writer import (
    WriteSummary,
    _run,
    _sampler_record,
    _ShardJob,
    prepare_generator,
    prepare_outputs,
)
from lightning_medaug.data.batch import unpack_batch

__all__ = ["EDIT_COLUMNS", "edit_targets", "load_training_set", "write_edit_bank"]

#: Manifest columns a bank of edits adds to :data:`~.manifest.COLUMNS`.
EDIT_COLUMNS = ("parent_index", "parent_sha256", "strength", "source_label", "soft_label")


def load_training_set(config: str | Path | Mapping[str, Any]) -> tuple[Dataset, dict[str, Any]]:
    """The real training set of a data module given by a recipe (its ``data`` section) or a data
    config (``class_path`` / ``init_args``), as a YAML file or a dict; also returns the data section used.

    A ``SyntheticMixDataModule`` is unwrapped to the real data module it holds, and training
    augmentation (``train_transforms``) is dropped: edits start from the real images themselves
    (see :func:`~lightning_medaug.bank.data_config.load_data_module`).
    """
    datamodule, section = load_data_module(config)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.train_dataloader().dataset, section


def edit_targets(spec: str | Mapping[int, int] | None, sources: np.ndarray, num_classes: int,
                 seed: int) -> np.ndarray:
    """The class every edit is guided to.

    Args:
        spec: ``"same"`` (or ``None``): each parent's own class; ``"other"``: a class drawn
            uniformly among the others, seeded by ``seed``; a mapping or ``"0:1,1:0"``: source -> target.
        sources: int64 classes of the parents (-1 for unlabelled data).
        num_classes: the generator's classes (0: unconditional, only ``"same"`` applies).
    """
    spec = "same" if spec is None else spec
    if num_classes == 0:
        if spec != "same":
            raise ValueError(f"the generator is unconditional (num_classes=0): it cannot edit towards target "
                             f"labels {spec!r}; leave them out")
        return np.full(len(sources), -1, dtype=np.int64)
    bad = sorted(set(sources[(sources < 0) | (sources >= num_classes)].tolist()))
    if bad:
        raise ValueError(f"the training set has labels {bad} outside the generator's classes 0..{num_classes - 1}")
    if spec == "same":
        return sources.copy()
    if spec == "other":
        if num_classes < 2:
            raise ValueError("target labels 'other' need a generator with at least 2 classes")
        shift = np.random.default_rng(np.random.SeedSequence([seed, 1])).integers(1, num_classes, len(sources))
        return (sources + shift) % num_classes
    mapping = spec if isinstance(spec, Mapping) else parse_class_map(str(spec), "target labels")
    missing = sorted(set(sources.tolist()) - {int(c) for c in mapping})
    if missing or any(not 0 <= int(t) < num_classes for t in mapping.values()):
        raise ValueError(f"target labels {spec!r} must map every class of the training set ({missing} missing) to "
                         f"a class in 0..{num_classes - 1}, like '0:1,1:0'")
    return np.array([int(mapping[int(c)]) for c in sources], dtype=np.int64)


def _read_parents(dataset: Dataset) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Classes (-1 when unlabelled), image hashes and masks (uint8 (N, 1, *S), or ``None`` when the
    samples have none) of every sample of ``dataset``."""
    labels, hashes, masks = [], [], []
    for i in range(len(dataset)):
        batch = unpack_batch(default_collate([dataset[i]]))
        if batch.label is not None and batch.label.numel() != 1:
            raise ValueError(f"training sample {i} has {batch.label.numel()} label values; edits need one class "
                             "per image (multi-label data is not supported)")
        labels.append(-1 if batch.label is None else int(batch.label))
        image = batch.image[0].detach().float().cpu().contiguous().numpy()
        hashes.append(hashlib.sha256(image.tobytes()).hexdigest())
        if batch.mask is not None:
            masks.append(batch.mask[0].detach().float().round().clamp(0, 1).to(torch.uint8).cpu().numpy())
    if not labels:
        raise ValueError("the training set is empty: nothing to edit")
    if masks and len(masks) != len(labels):
        raise ValueError("some training samples have a mask and others none; edits keep each parent's mask")
    return np.asarray(labels, dtype=np.int64), hashes, np.stack(masks) if masks else None


@dataclass
class _EditJob(_ShardJob):
    dataset: Dataset | None = None
    strength: float = 1.0
    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hashes: list[str] = field(default_factory=list)
    soft: np.ndarray | None = None

    columns = COLUMNS + EDIT_COLUMNS

    def _parents(self, part: np.ndarray) -> np.ndarray:
        return part % len(self.hashes)

    def draw(self, part: np.ndarray, labels: Tensor | None, masks: Tensor | None,
             generator: torch.Generator) -> Tensor:
        parents = self._parents(part)
        batch = unpack_batch(default_collate([self.dataset[int(p)] for p in parents]))
        device = self.model.device
        sources = None if labels is None else torch.as_tensor(self.sources[parents], device=device)
        # the parent's mask, read from the job's mask array (what the shard stores beside the edit)
        real_masks = masks if getattr(self.model, "requires_masks", False) else None
        return self.model.edit(batch.image.to(device).float(), self.strength, labels=sources, target_labels=labels,
                               masks=real_masks, generator=generator, **self.sample_kwargs)

    def row_extras(self, index: int) -> dict[str, Any]:
        parent = int(self._parents(np.asarray(index)))
        return {"parent_index": parent, "parent_sha256": self.hashes[parent], "strength": self.strength,
                "source_label": int(self.sources[parent]),
                "soft_label": None if self.soft is None else json.dumps([round(float(v), 6) for v in self.soft[index]])}


def write_edit_bank(model: Any, out: str | Path, dataset: Dataset, strength: float,
                    target_labels: str | Mapping[int, int] | None = None, num_samples: int | None = None,
                    shard_size: int = 1024, batch_size: int | None = None, seed: int = 0,
                    sample_kwargs: Mapping[str, Any] | None = None, dtype: str = "float16",
                    device: str | torch.device | None = None, progress: bool = True,
                    checkpoint_folder: str | Path | None = None,
                    source: Mapping[str, Any] | None = None, geometry: GeometryLike | None = None,
                    file_format: str | None = None) -> WriteSummary:
    """Write edits of the real images of ``dataset`` by the diffusion ``model`` into the bank ``out``.

    Args:
        model: a diffusion generator with ``edit`` (or its ``save_pretrained`` folder).
        dataset: the real training set (samples as the data module yields them, one class each).
        strength: edit strength in (0, 1], see :mod:`lightning_medaug.generative.editing`.
        target_labels: ``"same"`` (default), ``"other"`` or a source -> target map, see :func:`edit_targets`.
        num_samples: bank size; default one edit per training image; sample ``i`` edits image
            ``i % len(dataset)``, so a multiple gives that many edits of every image.
        sample_kwargs: options of ``model.edit`` (``sampler``, ``num_inference_steps``, ``guidance_scale``).
        source: a description of where ``dataset`` came from (e.g. the data config), kept in ``bank.json``.
        shard_size, batch_size, seed, dtype, device, progress, checkpoint_folder, geometry, file_format: as for
            :func:`~lightning_medaug.bank.writer.write_bank`; resuming works the same way.
    """
    from lightning_medaug.generative.editing import check_strength

    strength = check_strength(strength)
    model, settings = prepare_generator(model, out, shard_size, batch_size, seed, dtype, device, checkpoint_folder)
    if not callable(getattr(model, "edit", None)):
        raise ValueError(f"{type(model).__name__} cannot edit real images: use a diffusion model ('ddpm', 'ldm')")
    sources, hashes, parent_masks = _read_parents(dataset)
    if parent_masks is None and getattr(model, "requires_masks", False):
        raise ValueError(f"{type(model).__name__} is mask-conditional: edit a training set whose samples have masks")
    num_samples = len(sources) if num_samples is None else num_samples
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer (default: one edit per training image), "
                         f"got {num_samples!r}")
    num_classes = int(settings["num_classes"])
    targets = edit_targets(target_labels, sources, num_classes, seed)
    parents = np.arange(num_samples) % len(sources)
    labels = targets[parents]
    soft = None if num_classes == 0 else model.edit_soft_labels(
        torch.as_tensor(sources[parents]), torch.as_tensor(labels), strength).numpy()
    kwargs = check_sample_kwargs(model, sample_kwargs or {}, method="edit")
    counts = [] if num_classes == 0 else np.bincount(labels, minlength=num_classes).tolist()
    settings |= {
        "num_samples": num_samples, "sample_kwargs": kwargs,
        "masks": None if parent_masks is None else {
            "count": len(parent_masks), "shape": list(parent_masks.shape[1:]), "source": "parents",
            "sha256": hashlib.sha256(parent_masks.tobytes()).hexdigest()},
        "label_plan": {"kind": "edits", "counts": counts, "proportions": None, "num_samples": num_samples},
        "edit": {"strength": strength, "target_labels": target_labels if isinstance(target_labels, str | None)
                 else {str(k): int(v) for k, v in target_labels.items()}, "num_parents": len(sources),
                 "parents_sha256": hashlib.sha256("".join(hashes).encode()).hexdigest(),
                 "source": None if source is None else dict(source)},
    }
    outputs, files = prepare_outputs(geometry, file_format, tuple(settings["image_shape"][1:]),
                                     parent_masks is not None)
    # mask i of the job is parent i's; the writer takes sample g's mask as g % len(masks), its parent's
    names = None if parent_masks is None else [str(i) for i in range(len(parent_masks))]
    job = _EditJob(model, Path(out), settings | outputs, labels, parent_masks, names, kwargs,
                   _sampler_record(model, kwargs),
                   files, dataset=dataset, strength=strength, sources=sources, hashes=hashes, soft=soft)
    with rank_context() as ctx:
        return _run(job, ctx, progress)
