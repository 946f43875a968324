"""``SyntheticMixDataModule``: wrap any LightningDataModule and mix synthetic samples into training.

Five lines in a user's project::

    from lightning_medaug.mixing import SyntheticMixDataModule
    dm = SyntheticMixDataModule(MyDataModule(...), bank="banks/cgan", ratio=0.5)
    trainer.fit(my_model, datamodule=dm)      # my_model is unchanged

Only the training loader changes. Validation, test and predict loaders are the wrapped module's own
objects, so no synthetic sample can reach model selection or evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_medaug.hparams import save_own_hyperparameters
from lightning_medaug.mixing.adapter import (
    FlaggedReal,
    MixedDataset,
    SampleTemplate,
    SyntheticAdapter,
    infer_value_range,
)
from lightning_medaug.mixing.batch_sampler import MixBatchSampler
from lightning_medaug.mixing.generated import GeneratedPool, generate_pool, model_image_shape
from lightning_medaug.mixing.inherit import inherited_transform
from lightning_medaug.mixing.iterable import EpochLoader, MixedIterable
from lightning_medaug.mixing.real import (
    batch_size_holders,
    labels_of,
    masks_of,
    probe_indices,
    user_batch_sampler,
    user_sampler,
)
from lightning_medaug.mixing.sampler import MODES, MixSampler, curriculum, synthetic_count

__all__ = ["SyntheticMixDataModule"]

_FORWARDED = ("spatial_dims", "in_channels", "image_size", "num_classes", "task", "class_names")
#: Synthetic pool drawn from a generator for a streamed real set of unknown length (``num_generated`` overrides).
_STREAM_POOL = 1024


class SyntheticMixDataModule(L.LightningDataModule):
    """Real + synthetic training data at a fixed synthetic fraction; everything else untouched.

    Synthetic samples mirror the real ones field by field (container, keys, Python / NumPy / torch
    types, dtype, shape, layout, value range), so any collate function takes a mixed batch; what
    cannot be mirrored is refused at ``setup()`` with one line. The wrapped loader's own sampler or
    batch sampler still chooses the real samples; a streamed (``IterableDataset``) real set is
    interleaved with synthetic samples at the ratio.

    Args:
        datamodule: the user's data module, used unchanged.
        bank: folder written by ``medaug generate`` (read lazily from its shard files).
        model: instead of a bank, a ``GenerativeModule`` or ``save_pretrained`` folder, sampled on its own device.
        ratio: synthetic fraction of each training epoch, in [0, 1].
        mode: ``"add"`` keeps every real sample and adds synthetic ones; ``"replace"`` keeps the
            epoch length (``ratio=1`` there trains on synthetic data only); ``"swap"`` swaps each
            real sample for one of its own diffusion edits with probability ``ratio`` (DA-Fusion,
            Trabucco et al. 2023), from a bank written by ``medaug generate --edit-from``.
        class_balance: give the synthetic budget to the classes with fewest samples.
        seed: seeds every epoch's choice of samples (with the epoch number).
        return_is_synthetic: add an ``is_synthetic`` flag to every training sample.
        ratio_schedule: ``{epoch: ratio}`` from that epoch on, e.g. ``{0: 0.0, 5: 0.5}``; in ``add``
            mode the epoch length changes, so set ``reload_dataloaders_every_n_epochs=1``. The preset
            ``"synthetic_then_real:N"`` is the curriculum of synthetic pre-training then real
            fine-tuning: synthetic only for N epochs, real only after (``mode="replace"``).
        bank_labels: keep only these labels of the bank; ``min_score``: keep samples scoring at least this.
        value_range: value range of the real images (synthetic ones are [-1, 1] and get mapped);
            by default recognised from the real images: uint8 is 0..255, floats within [0, 1],
            [-1, 1] or [0, 255] use that range, anything else must be given.
        synthetic_transform: ``"inherit"`` runs the real training set's random augmentations on
            synthetic samples too (a MONAI ``Compose`` from its first random transform on, as
            ``CacheDataset`` re-runs it; another dict transform whole; none for tuple samples, whose
            torchvision transforms start from files); ``None`` runs none; or a callable on samples
            in your layout.
        num_generated: pool size drawn from ``model`` (default: one epoch's need).
        regenerate_every_epoch: draw a fresh pool from ``model`` every epoch (needs
            ``reload_dataloaders_every_n_epochs=1``).
        sample_kwargs: extra ``sample`` arguments for ``model`` (sampler, steps, guidance...).
        to_sample: build a synthetic sample yourself from ``{"image", "label", "mask"}`` (tensors,
            image in [-1, 1], label a class index).
        image_key, label_key, mask_key: keys of the real dict samples (at any depth).
        fill: constants for fields of the real samples that no generator can provide, by key.
        generator: deprecated name of ``model`` (FutureWarning); ``generator=`` names a ``torch.Generator``.
    """

    def __init__(self, datamodule: L.LightningDataModule, bank: str | None = None, model: Any = None,
                 ratio: float = 0.5, mode: str = "add", class_balance: bool = False, seed: int = 0,
                 return_is_synthetic: bool = False, ratio_schedule: dict[int, float] | str | None = None,
                 bank_labels: list[int] | None = None, min_score: float | None = None,
                 value_range: tuple[float, float] | None = None, synthetic_transform: Any = "inherit",
                 num_generated: int | None = None, regenerate_every_epoch: bool = False,
                 sample_kwargs: dict[str, Any] | None = None, to_sample: Callable[[dict], Any] | None = None,
                 image_key: str = "image", label_key: str = "label", mask_key: str = "mask",
                 fill: dict[str, Any] | None = None, generator: Any = None):
        super().__init__()
        if generator is not None:
            if model is not None:
                raise ValueError("pass model= only (generator= is its deprecated name), not both")
            warnings.warn("SyntheticMixDataModule(generator=...) is deprecated: pass model=...; generator= names a "
                          "torch.Generator elsewhere in the library", FutureWarning, stacklevel=2)
            model, generator = generator, None
        if not isinstance(datamodule, L.LightningDataModule):
            raise ValueError(f"datamodule must be a LightningDataModule, got {type(datamodule).__name__}")
        if (bank is None) == (model is None):
            raise ValueError("pass exactly one synthetic source: bank=<folder> or model=<generative model or folder>")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        ratio_schedule = curriculum(ratio_schedule, mode) if isinstance(ratio_schedule, str) else ratio_schedule
        if mode == "swap" and bank is None:
            raise ValueError("mode='swap' swaps real samples for their own edits: pass bank=<a bank written by "
                             "`medaug generate --edit-from`>")
        for r in [ratio, *(ratio_schedule or {}).values()]:
            if not 0.0 <= float(r) <= 1.0:
                raise ValueError(f"ratio must lie in [0, 1], got {r}")
        if mode == "add" and max([ratio, *(ratio_schedule or {}).values()]) >= 1.0:
            raise ValueError("ratio=1 needs mode='replace' (synthetic-only training); 'add' keeps every real sample")
        if synthetic_transform != "inherit" and synthetic_transform is not None and not callable(synthetic_transform):
            raise ValueError("synthetic_transform must be 'inherit', None or a callable on samples")
        if value_range is not None and not (len(value_range) == 2 and float(value_range[0]) < float(value_range[1])):
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
        if fill is not None and not isinstance(fill, Mapping):
            raise ValueError(f"fill must be a dict of constant values by key, got {type(fill).__name__}")
        skip = ["datamodule", "model", "generator", "to_sample", "synthetic_transform", "fill"]
        save_own_hyperparameters(self, ignore=skip)
        self.datamodule, self.bank_path, self.model = datamodule, bank, model
        self.ratio, self.mode, self.class_balance, self.seed = float(ratio), mode, class_balance, seed
        self.ratio_schedule = {int(k): float(v) for k, v in (ratio_schedule or {}).items()}
        self.synthetic_transform, self.to_sample, self.fill = synthetic_transform, to_sample, dict(fill or {})
        self.keys = (image_key, label_key, mask_key)
        self._source: Dataset | None = None
        self._source_epoch: int | None = None
        self._template: SampleTemplate | None = None
        self._epoch = 0
        self.sampler: MixSampler | MixBatchSampler | None = None

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.datamodule.trainer is None and self.trainer is not None:
            self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)
        self._template = None
        if stage in (None, "fit"):
            # Read the real structure, open the source and build one mixed pair now, so whatever
            # cannot be mixed fails here with one line, before the run writes anything.
            self._check_pair()

    def teardown(self, stage: str | None = None) -> None:
        self.datamodule.teardown(stage)

    def val_dataloader(self) -> Any:
        return self._wrapped_loader("val_dataloader")

    def test_dataloader(self) -> Any:
        return self._wrapped_loader("test_dataloader")

    def predict_dataloader(self) -> Any:
        return self._wrapped_loader("predict_dataloader")

    def _wrapped_loader(self, name: str) -> Any:
        """The wrapped module's own loader; none (an empty list, which Lightning skips) where it defines none,
        as a user module with only a training loader has no validation to run."""
        if getattr(type(self.datamodule), name) is getattr(L.LightningDataModule, name):
            return []
        return getattr(self.datamodule, name)()

    @property
    def batch_size(self) -> int:
        """The wrapped module's batch size (its attribute or hyperparameter), which mixed batches reuse.

        Setting it sets the wrapped module's, so Lightning's ``BatchSizeFinder`` and
        ``Tuner.scale_batch_size`` size mixed batches as they would the real ones.
        """
        holder = batch_size_holders(self.datamodule)[0]
        return holder["batch_size"] if isinstance(holder, dict) else holder.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        for holder in batch_size_holders(self.datamodule):  # both, when the module keeps it as attribute and hparam
            if isinstance(holder, dict):
                holder["batch_size"] = value
            else:
                holder.batch_size = value

    # -- the mixed training loader --------------------------------------------------------------
    def _real_train_set(self) -> tuple[DataLoader, Dataset]:
        real_loader = self.datamodule.train_dataloader()
        if not isinstance(real_loader, DataLoader):
            raise ValueError("the wrapped train_dataloader() must return one torch DataLoader to mix into, got "
                             f"{type(real_loader).__name__}")
        real = real_loader.dataset
        if not isinstance(real, IterableDataset) and len(real) == 0:
            raise ValueError("the wrapped module's training set is empty")
        return real_loader, real

    def _real_template(self, real: Dataset) -> SampleTemplate:
        """The real sample's structure (read once per ``setup``), with the value range of its images."""
        if self._template is None:
            if isinstance(real, IterableDataset):
                probe = [next(iter(real))]
            else:
                probe = [real[i] for i in probe_indices(len(real))]
            strict = self.to_sample is None  # a user's to_sample builds the fields we could not
            template = SampleTemplate(probe[0], *self.keys, fill=self.fill, strict=strict)
            if self.hparams.value_range is not None:
                template.value_range = tuple(float(v) for v in self.hparams.value_range)
            elif strict:
                template.value_range = infer_value_range(probe, template)
            self._template = template
        return self._template

    def _parts(self) -> tuple[DataLoader, Dataset, SampleTemplate, Dataset, SyntheticAdapter, int]:
        real_loader, real = self._real_train_set()
        template = self._real_template(real)
        epoch = self.trainer.current_epoch if self.trainer is not None else self._epoch
        source = self._synthetic_source(template, real, epoch)
        transform = self._transform(real, template)
        synthetic = SyntheticAdapter(source, template, transform, self.hparams.return_is_synthetic, self.to_sample)
        return real_loader, real, template, source, synthetic, epoch

    def _check_pair(self) -> None:
        """Collate one real and one synthetic sample with the user's collate function."""
        real_loader, real, template, source, synthetic, _ = self._parts()
        self._parents(source, real)
        made = synthetic[0]
        real_sample = template.mark_real(template.sample) if self.hparams.return_is_synthetic else template.sample
        try:
            real_loader.collate_fn([real_sample, made])
        except Exception as err:  # whatever the user's collate raises, said at set-up and in one line
            raise ValueError(f"a synthetic sample does not collate with a real one in the wrapped loader's "
                             f"collate_fn ({type(err).__name__}: {err}); pass to_sample= to build synthetic samples "
                             "in your layout") from err

    def train_dataloader(self) -> DataLoader:
        real_loader, real, template, source, synthetic, epoch = self._parts()
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        common = dict(num_workers=real_loader.num_workers, collate_fn=real_loader.collate_fn,
                      pin_memory=real_loader.pin_memory, worker_init_fn=real_loader.worker_init_fn,
                      persistent_workers=real_loader.persistent_workers and real_loader.num_workers > 0)
        flag = self.hparams.return_is_synthetic
        if isinstance(real, IterableDataset):
            if self.mode == "swap":
                raise ValueError("mode='swap' needs a map-style real training set: edits are matched to their "
                                 "parents by index")
            if self.class_balance:
                raise ValueError("class_balance needs a map-style real training set; a streamed one has no "
                                 "labels to count ahead")
            mixed = MixedIterable(real, synthetic, self.ratio, self.mode, self.seed, self.ratio_schedule, world,
                                  rank, template.mark_real if flag else None)
            epoch_of = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
            return EpochLoader(mixed, epoch_of, batch_size=real_loader.batch_size, drop_last=real_loader.drop_last,
                               **common)
        real_part = FlaggedReal(real, template) if flag else real
        parents = self._parents(source, real)
        batches = user_batch_sampler(real_loader)
        if batches is not None:
            if self.mode == "swap":
                raise ValueError("mode='swap' cannot be combined with the wrapped loader's own batch_sampler "
                                 f"({type(batches).__name__}); use add or replace")
            if self.class_balance:
                raise ValueError("class_balance cannot be combined with the wrapped loader's own batch_sampler "
                                 f"({type(batches).__name__}), which already chooses each batch's samples")
            self.sampler = MixBatchSampler(batches, len(real), source.labels, self.ratio, self.mode, self.seed,
                                           self.ratio_schedule, world, rank)
            self.sampler.set_epoch(epoch)
            return DataLoader(MixedDataset(real_part, synthetic), batch_sampler=self.sampler, **common)
        real_labels = labels_of(real, template) if self.class_balance else None
        self.sampler = MixSampler(len(real), source.labels, self.ratio, self.mode, self.seed, real_labels,
                                  self.class_balance, self.ratio_schedule, world, rank,
                                  real_sampler=user_sampler(real_loader), synthetic_parents=parents)
        self.sampler.set_epoch(epoch)
        batch_size = real_loader.batch_size or getattr(real_loader.batch_sampler, "batch_size", None)
        if batch_size is None:
            raise ValueError("the wrapped train_dataloader() has no batch_size to reuse")
        return DataLoader(MixedDataset(real_part, synthetic), batch_size=batch_size, sampler=self.sampler,
                          drop_last=real_loader.drop_last, **common)

    def _parents(self, source: Any, real: Dataset) -> np.ndarray | None:
        """The real parent index of each synthetic sample, for ``mode="swap"``."""
        if self.mode != "swap":
            return None
        column = getattr(source, "column", None)
        parents = column("parent_index") if column is not None else None
        if parents is None:
            raise ValueError(f"mode='swap' needs a bank of edits (with a parent_index column); {self.bank_path} has "
                             "none: write one with `medaug generate --edit-from <data recipe>`")
        parents = np.nan_to_num(parents, nan=-1).astype(np.int64)
        if parents.size and int(parents.max()) >= len(real):
            raise ValueError(f"the bank's edits name real parents up to index {int(parents.max())} but the training "
                             f"set holds {len(real)} samples: write the edits from this data module's training set")
        return parents

    def _transform(self, real: Dataset, template: SampleTemplate) -> Callable | None:
        if self.synthetic_transform == "inherit":
            return inherited_transform(real, template.kind == "dict")
        return self.synthetic_transform

    def _synthetic_source(self, template: SampleTemplate, real: Dataset, epoch: int) -> Dataset:
        if self.bank_path is not None:
            if self._source is None:
                from lightning_medaug.bank import SyntheticBank

                self._source = SyntheticBank(str(self.bank_path), labels=self.hparams.bank_labels,
                                             min_score=self.hparams.min_score)
        elif self._source is None or (self.hparams.regenerate_every_epoch and self._source_epoch != epoch):
            self._source, self._source_epoch = self._generate(template, real, epoch), epoch
        self._check_compatible(self._source, template, real)
        return self._source

    def _generate(self, template: SampleTemplate, real: Dataset, epoch: int) -> GeneratedPool:
        model = self.model
        if isinstance(model, (str, Path)):
            from lightning_medaug.generative import load_generator

            model = self.model = load_generator(model)
        if self.hparams.regenerate_every_epoch and self.trainer is not None \
                and self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("regenerate_every_epoch needs Trainer(reload_dataloaders_every_n_epochs=1)")
        masks = None
        if getattr(model, "requires_masks", False):
            if isinstance(real, IterableDataset):
                raise ValueError("a mask-conditional generator needs the real masks up front; a streamed real set "
                                 "has none: write a bank with `medaug generate` and pass bank=")
            template.bind_layout(model_image_shape(model))
            masks = masks_of(real, template)
        if self.hparams.num_generated:
            count = self.hparams.num_generated
        elif isinstance(real, IterableDataset):
            count = _STREAM_POOL
        else:
            ratios = [self.ratio, *self.ratio_schedule.values()]
            count = max(1, max(synthetic_count(len(real), r, self.mode)[1] for r in ratios))
        return generate_pool(model, count, seed=self.seed * 100_003 + epoch, masks=masks,
                             sample_kwargs=self.hparams.sample_kwargs)

    def _check_compatible(self, source: Any, template: SampleTemplate, real: Dataset) -> None:
        if len(source) == 0:
            raise ValueError("the synthetic source is empty")
        if self.to_sample is None:
            template.bind_layout(tuple(source.image_shape))
        data_classes = getattr(self.datamodule, "num_classes", None)
        labels = np.asarray(source.labels)
        if template.has_label and data_classes and labels.size and int(labels.max()) >= int(data_classes):
            raise ValueError(f"the synthetic source has labels up to {int(labels.max())} but the data has "
                             f"{data_classes} classes (0..{int(data_classes) - 1}): use a generator trained on this "
                             f"data, or keep its classes with bank_labels")
        vector = template.label_classes
        if template.has_label and vector and labels.size and int(labels.max()) >= vector:
            raise ValueError(f"the synthetic source has labels up to {int(labels.max())} but the real labels are "
                             f"vectors of {vector} classes: use a generator trained on this data, or bank_labels")
        if self.to_sample is not None:
            return
        if template.has_label and not getattr(source, "has_labels", True):
            raise ValueError("the real samples have labels but the synthetic source has none: use a class-conditional "
                             "generator, or to_sample= to label synthetic samples yourself")
        if template.has_mask and not getattr(source, "has_masks", False):
            raise ValueError("the real samples have masks but the synthetic source has none")
        if self.mode == "add" and self.ratio_schedule and self.trainer is not None \
                and self.trainer.reload_dataloaders_every_n_epochs != 1 and not isinstance(real, IterableDataset) \
                and len({synthetic_count(len(real), r, self.mode)
                         for r in [self.ratio, *self.ratio_schedule.values()]}) > 1:
            raise ValueError("a ratio schedule in 'add' mode changes the epoch length: "
                             "set Trainer(reload_dataloaders_every_n_epochs=1) or use mode='replace'")

    # -- exact resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "ratio": self.ratio, "mode": self.mode, "ratio_schedule": self.ratio_schedule,
                "epoch": self.sampler.epoch if self.sampler is not None else self._epoch,
                "datamodule": self.datamodule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("seed", "ratio", "mode"):
            if key in state_dict and state_dict[key] != getattr(self, key):
                raise ValueError(f"the checkpoint was trained with {key}={state_dict[key]!r} but this module has "
                                 f"{key}={getattr(self, key)!r}: resume with the same mixing settings")
        self._epoch = int(state_dict.get("epoch", 0))
        self.datamodule.load_state_dict(state_dict.get("datamodule", {}))


def _forward(name: str) -> property:
    return property(lambda self: getattr(self.datamodule, name, None),
                    doc=f"The wrapped data module's ``{name}`` (None when it has none).")


# What the wrapped module tells about its data (shape, classes) stays visible through the wrapper.
for _name in _FORWARDED:
    setattr(SyntheticMixDataModule, _name, _forward(_name))
