"""What lightning_medaug.compat relies on in Lightning, pinned with a real Trainer.

A Lightning release that moves one of these fails here, naming the function, rather than
silently changing when generators log or which loader DP-SGD trains on.
"""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_medaug.compat import attached_trainer, batches_that_stepped, wrap_train_dataloader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCHES = 7


def loader(batch_size: int = 2) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(BATCHES * 2, 3)), batch_size=batch_size)


def trainer(**kwargs) -> L.Trainer:
    defaults = {"accelerator": "cpu", "max_epochs": 1, "logger": False, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(**{**defaults, **kwargs})


class TwoOptimizers(L.LightningModule):
    """Steps two optimisers per batch by hand, as the GANs do: global_step runs twice as fast as batches."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)
        self.seen: list[tuple[int, int]] = []  # (batches_that_stepped, global_step) at each batch
        self.attached: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((batches_that_stepped(self.trainer), self.trainer.global_step))
        self.attached.append(attached_trainer(self) is self.trainer)
        for optimizer, layer in zip(self.optimizers(), (self.a, self.b)):
            optimizer.zero_grad()
            self.manual_backward(layer(batch[0]).square().mean())
            optimizer.step()
        self.log("x", float(batch_idx), on_step=True, on_epoch=False)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


def test_batches_that_stepped_counts_batches_and_sets_when_loggers_write(tmp_path):
    model = TwoOptimizers()
    every = 3
    trainer(logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=every) \
        .fit(model, loader())
    assert model.seen == [(i, 2 * i) for i in range(BATCHES)]  # once per batch, not per optimiser step
    with open(tmp_path / "metrics.csv", encoding="utf-8") as file:
        written = [int(row["step"]) for row in csv.DictReader(file) if row.get("x")]
    # the rule logs_this_batch mirrors: the loggers write a batch's step metrics when (count + 1) % every == 0
    assert written == [count for count, _ in model.seen if (count + 1) % every == 0] == [2, 5]


def test_attached_trainer_is_the_running_trainer_and_none_without_one():
    model = TwoOptimizers()
    assert attached_trainer(model) is None
    with pytest.raises(RuntimeError, match="not attached"):  # what attached_trainer catches
        model.trainer  # noqa: B018
    trainer(limit_train_batches=2).fit(model, loader())
    assert model.attached == [True, True]


class HookData(L.LightningModule):
    """Trains on whatever loader it is given; can also provide one through its own hook."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.batch_sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        self.batch_sizes.append(batch[0].shape[0])
        return self.layer(batch[0]).square().mean()

    def train_dataloader(self):
        return loader()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Rebatch(L.Callback):
    """Trains on the loader's dataset in batches of 7, through wrap_train_dataloader; undone at teardown."""

    def __init__(self) -> None:
        self.wrapped: list[DataLoader] = []
        self.undo = None

    def setup(self, trainer, pl_module, stage):
        self.undo = wrap_train_dataloader(trainer, self.rebatch)

    def rebatch(self, original: DataLoader) -> DataLoader:
        self.wrapped.append(original)
        return DataLoader(original.dataset, batch_size=7)

    def teardown(self, trainer, pl_module, stage):
        self.undo()


@pytest.mark.parametrize("origin", ["module hook", "data module", "loader"])
def test_wrap_train_dataloader_replaces_the_loader_from_every_origin_and_undoes(origin):
    model, rebatch = HookData(), Rebatch()
    source = {"module hook": {}, "data module": {"datamodule": L.LightningDataModule.from_datasets(
        loader().dataset, batch_size=2)}, "loader": {"train_dataloaders": loader()}}[origin]
    fit = trainer(callbacks=[rebatch])
    fit.fit(model, **source)
    assert len(rebatch.wrapped) == 1 and rebatch.wrapped[0].batch_size == 2  # the loader the origin built
    assert model.batch_sizes == [7, 7]
    # undone: the next fit on the same trainer reads the origin's own loader again
    model.batch_sizes.clear()
    fit.fit_loop.max_epochs = 2
    fit.callbacks.remove(rebatch)
    fit.fit(model, **source)
    assert model.batch_sizes == [2] * BATCHES
