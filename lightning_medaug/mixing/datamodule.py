"""``SyntheticMixDataModule``: wrap any LightningDataModule and mix synthetic samples into training.

Five lines in a user's project::

    from lightning_medaug.mixing import SyntheticMixDataModule
    dm = SyntheticMixDataModule(MyDataModule(...), bank="banks/cgan", ratio=0.5)
    trainer.fit(my_model, datamodule=dm)      # my_model is unchanged

Only the training loader changes. Validation, test and predict loaders are the wrapped module's own
objects, so no synthetic sample can reach model selection or evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
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
)
from lightning_medaug.mixing.generated import GeneratedPool, generate_pool
from lightning_medaug.mixing.sampler import MODES, MixSampler, synthetic_count

__all__ = ["SyntheticMixDataModule"]

_FORWARDED = ("spatial_dims", "in_channels", "image_size", "num_classes", "task", "class_names")


class SyntheticMixDataModule(L.LightningDataModule):
    """Real + synthetic training data at a fixed synthetic fraction; everything else untouched.

    Args:
        datamodule: the user's data module, used unchanged.
        bank: folder written by ``medaug generate`` (read lazily from its shard files).
        generator: instead of a bank, a generator (a ``GenerativeModule`` or a ``save_pretrained``
            folder) sampled at the start of training, on its own device (GPU users).
        ratio: synthetic fraction of each training epoch, in [0, 1].
        mode: ``"add"`` keeps every real sample and adds synthetic ones; ``"replace"`` keeps the
            epoch length (``ratio=1`` there trains on synthetic data only).
        class_balance: give the synthetic budget to the classes with fewest samples.
        seed: seeds every epoch's choice of samples (with the epoch number).
        return_is_synthetic: add an ``is_synthetic`` flag to every training sample.
        ratio_schedule: ``{epoch: ratio}`` from that epoch on, e.g. ``{0: 0.0, 5: 0.5}``; in ``add``
            mode the epoch length changes, so set ``reload_dataloaders_every_n_epochs=1``.
        bank_labels: keep only these labels of the bank; ``min_score``: keep samples scoring at least this.
        value_range: value range of the real images (synthetic ones are [-1, 1] and get mapped).
        synthetic_transform: ``"inherit"`` applies the real training set's per-sample ``transform``
            (for dict samples) to synthetic ones too; ``None`` applies none; or a callable on dicts.
        num_generated: pool size drawn from ``generator`` (default: one epoch's need).
        regenerate_every_epoch: draw a fresh pool from ``generator`` every epoch (needs
            ``reload_dataloaders_every_n_epochs=1``).
        sample_kwargs: extra ``sample`` arguments for ``generator`` (sampler, steps, guidance...).
        to_sample: build a synthetic sample yourself from ``{"image", "label", "mask"}``.
        image_key, label_key, mask_key: keys of the real dict samples.
    """

    def __init__(self, datamodule: L.LightningDataModule, bank: str | None = None, generator: Any = None,
                 ratio: float = 0.5, mode: str = "add", class_balance: bool = False, seed: int = 0,
                 return_is_synthetic: bool = False, ratio_schedule: dict[int, float] | None = None,
                 bank_labels: list[int] | None = None, min_score: float | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0), synthetic_transform: Any = "inherit",
                 num_generated: int | None = None, regenerate_every_epoch: bool = False,
                 sample_kwargs: dict[str, Any] | None = None, to_sample: Callable[[dict], Any] | None = None,
                 image_key: str = "image", label_key: str = "label", mask_key: str = "mask"):
        super().__init__()
        if not isinstance(datamodule, L.LightningDataModule):
            raise ValueError(f"datamodule must be a LightningDataModule, got {type(datamodule).__name__}")
        if (bank is None) == (generator is None):
            raise ValueError("pass exactly one synthetic source: bank=<folder> or generator=<model or folder>")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for r in [ratio, *(ratio_schedule or {}).values()]:
            if not 0.0 <= float(r) <= 1.0:
                raise ValueError(f"ratio must lie in [0, 1], got {r}")
        if mode == "add" and max([ratio, *(ratio_schedule or {}).values()]) >= 1.0:
            raise ValueError("ratio=1 needs mode='replace' (synthetic-only training); 'add' keeps every real sample")
        if synthetic_transform != "inherit" and synthetic_transform is not None and not callable(synthetic_transform):
            raise ValueError("synthetic_transform must be 'inherit', None or a callable on sample dicts")
        save_own_hyperparameters(self, ignore=["datamodule", "generator", "to_sample", "synthetic_transform"])
        self.datamodule, self.bank_path, self.generator = datamodule, bank, generator
        self.ratio, self.mode, self.class_balance, self.seed = float(ratio), mode, class_balance, seed
        self.ratio_schedule = {int(k): float(v) for k, v in (ratio_schedule or {}).items()}
        self.synthetic_transform, self.to_sample = synthetic_transform, to_sample
        self.keys = (image_key, label_key, mask_key)
        self._source: Dataset | None = None
        self._epoch = 0
        self.sampler: MixSampler | None = None

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.datamodule.trainer is None and self.trainer is not None:
            self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)
        if self.bank_path is not None and stage in (None, "fit"):
            # Open and check the bank now, so a bad one fails before the run writes anything.
            _, real = self._real_train_set()
            self._synthetic_source(SampleTemplate(real[0], *self.keys, value_range=self.hparams.value_range), real, 0)

    def teardown(self, stage: str | None = None) -> None:
        self.datamodule.teardown(stage)

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.datamodule.predict_dataloader()

    @property
    def batch_size(self) -> int:
        """The wrapped module's batch size (its attribute or hyperparameter), which mixed batches reuse.

        Setting it sets the wrapped module's, so Lightning's ``BatchSizeFinder`` and
        ``Tuner.scale_batch_size`` size mixed batches as they would the real ones.
        """
        holder = _batch_size_holders(self.datamodule)[0]
        return holder["batch_size"] if isinstance(holder, dict) else holder.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        for holder in _batch_size_holders(self.datamodule):  # both, when the module keeps it as attribute and hparam
            if isinstance(holder, dict):
                holder["batch_size"] = value
            else:
                holder.batch_size = value

    # -- the mixed training loader --------------------------------------------------------------
    def _real_train_set(self) -> tuple[DataLoader, Dataset]:
        real_loader = self.datamodule.train_dataloader()
        if not isinstance(real_loader, DataLoader):
            raise ValueError("the wrapped train_dataloader() must return one torch DataLoader to mix into")
        real = real_loader.dataset
        if isinstance(real, IterableDataset):
            raise ValueError("cannot mix into an IterableDataset: the wrapped training set must be map-style")
        if len(real) == 0:
            raise ValueError("the wrapped module's training set is empty")
        return real_loader, real

    def train_dataloader(self) -> DataLoader:
        real_loader, real = self._real_train_set()
        template = SampleTemplate(real[0], *self.keys, value_range=self.hparams.value_range)
        epoch = self.trainer.current_epoch if self.trainer is not None else self._epoch
        source = self._synthetic_source(template, real, epoch)
        transform = self._transform(real, template)
        synthetic = SyntheticAdapter(source, template, transform, self.hparams.return_is_synthetic, self.to_sample)
        real_part = FlaggedReal(real, template) if self.hparams.return_is_synthetic else real
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        real_labels = _labels_of(real, template, self.keys[1]) if self.class_balance else None
        self.sampler = MixSampler(len(real), source.labels, self.ratio, self.mode, self.seed, real_labels,
                                  self.class_balance, self.ratio_schedule, world, rank)
        self.sampler.set_epoch(epoch)
        batch_size = real_loader.batch_size or getattr(real_loader.batch_sampler, "batch_size", None)
        if batch_size is None:
            raise ValueError("the wrapped train_dataloader() has no batch_size to reuse")
        return DataLoader(MixedDataset(real_part, synthetic), batch_size=batch_size, sampler=self.sampler,
                          num_workers=real_loader.num_workers, collate_fn=real_loader.collate_fn,
                          pin_memory=real_loader.pin_memory, drop_last=real_loader.drop_last,
                          worker_init_fn=real_loader.worker_init_fn,
                          persistent_workers=real_loader.persistent_workers and real_loader.num_workers > 0)

    def _transform(self, real: Dataset, template: SampleTemplate) -> Callable | None:
        if self.synthetic_transform == "inherit":
            return getattr(real, "transform", None) if template.kind == "dict" else None
        return self.synthetic_transform

    def _synthetic_source(self, template: SampleTemplate, real: Dataset, epoch: int) -> Dataset:
        if self.bank_path is not None:
            if self._source is None:
                from lightning_medaug.bank import SyntheticBank

                self._source = SyntheticBank(str(self.bank_path), labels=self.hparams.bank_labels,
                                             min_score=self.hparams.min_score)
        elif self._source is None or self.hparams.regenerate_every_epoch:
            self._source = self._generate(template, real, epoch)
        self._check_compatible(self._source, template, real)
        return self._source

    def _generate(self, template: SampleTemplate, real: Dataset, epoch: int) -> GeneratedPool:
        model = self.generator
        if isinstance(model, (str, Path)):
            from lightning_medaug.generative import load_generator

            model = self.generator = load_generator(model)
        if self.hparams.regenerate_every_epoch and self.trainer is not None \
                and self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("regenerate_every_epoch needs Trainer(reload_dataloaders_every_n_epochs=1)")
        ratios = [self.ratio, *self.ratio_schedule.values()]
        need = max(synthetic_count(len(real), r, self.mode)[1] for r in ratios)
        count = self.hparams.num_generated or max(1, need)
        masks = None
        if getattr(model, "requires_masks", False):
            masks = _masks_of(real, template, self.keys[2])
        return generate_pool(model, count, seed=self.seed * 100_003 + epoch, masks=masks,
                             sample_kwargs=self.hparams.sample_kwargs)

    def _check_compatible(self, source: Any, template: SampleTemplate, real: Dataset) -> None:
        if len(source) == 0:
            raise ValueError("the synthetic source is empty")
        real_shape = tuple(template.image.shape)
        if tuple(source.image_shape) != real_shape:
            raise ValueError(f"synthetic images have shape {tuple(source.image_shape)} but the real ones {real_shape}: "
                             "the bank was written for another image size or channel count")
        data_classes = getattr(self.datamodule, "num_classes", None)
        labels = np.asarray(source.labels)
        if template.has_label and data_classes and labels.size and int(labels.max()) >= int(data_classes):
            raise ValueError(f"the synthetic source has labels up to {int(labels.max())} but the data has "
                             f"{data_classes} classes (0..{int(data_classes) - 1}): use a generator trained on this "
                             f"data, or keep its classes with bank_labels")
        if template.has_label and not getattr(source, "has_labels", True):
            raise ValueError("the real samples have labels but the synthetic source has none: use a class-conditional "
                             "generator, or to_sample= to label synthetic samples yourself")
        if template.has_mask and not getattr(source, "has_masks", False):
            raise ValueError("the real samples have masks but the synthetic source has none")
        if self.mode == "add" and self.ratio_schedule and self.trainer is not None \
                and self.trainer.reload_dataloaders_every_n_epochs != 1 \
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


def _labels_of(dataset: Dataset, template: SampleTemplate, label_key: str) -> np.ndarray:
    """Labels of a real dataset: its ``labels`` attribute when it has one, else read sample by sample."""
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == len(dataset):
        return np.asarray(labels).reshape(len(dataset), -1)[:, 0].astype(np.int64)
    if not template.has_label:
        raise ValueError("class_balance needs labelled real samples")
    pick = (lambda s: s[label_key]) if template.kind == "dict" else (lambda s: s[template.order.index("label")])
    return np.array([int(np.asarray(pick(dataset[i])).reshape(-1)[0]) for i in range(len(dataset))])


def _masks_of(dataset: Dataset, template: SampleTemplate, mask_key: str) -> Any:
    import torch

    if not template.has_mask:
        raise ValueError("the generator is mask-conditional but the real samples carry no masks to condition on")
    pick = (lambda s: s[mask_key]) if template.kind == "dict" else (lambda s: s[template.order.index("mask")])
    return torch.stack([torch.as_tensor(pick(dataset[i])).float() for i in range(len(dataset))])


def _batch_size_holders(datamodule: L.LightningDataModule) -> list[Any]:
    """Where ``datamodule`` keeps its batch size: itself and/or its hparams, as Lightning looks.

    Raises ``AttributeError`` when it keeps none, so ``hasattr`` on the mixer is then False, as for
    any module without a batch size.
    """
    holders: list[Any] = [datamodule] if hasattr(datamodule, "batch_size") else []
    if "batch_size" in getattr(datamodule, "hparams", {}):
        holders.append(datamodule.hparams)
    if not holders:
        raise AttributeError(f"{type(datamodule).__name__} keeps no batch_size attribute or hyperparameter")
    return holders


def _forward(name: str) -> property:
    return property(lambda self: getattr(self.datamodule, name, None),
                    doc=f"The wrapped data module's ``{name}`` (None when it has none).")


# What the wrapped module tells about its data (shape, classes) stays visible through the wrapper.
for _name in _FORWARDED:
    setattr(SyntheticMixDataModule, _name, _forward(_name))
