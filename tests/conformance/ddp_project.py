"""A user's torchvision-style project trained under DDP (2 processes, gloo), mixed with synthetic data.

Run by ``test_project_ddp.py``: ``python ddp_project.py <out folder> bank|model <bank or generator folder>``.
Lightning starts the second process itself; each rank writes the SHA-1 of every image it trained on
to ``<out>/rank<r>.json``.
"""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_medaug.cli import close_process_group
from lightning_medaug.data import make_phantoms
from lightning_medaug.mixing import SyntheticMixDataModule


class Data(L.LightningDataModule):
    def train_dataloader(self):
        images, labels, _ = make_phantoms(40, image_size=16, seed=13)
        return DataLoader(TensorDataset(images, labels), batch_size=5, shuffle=True)


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2))
        self.hashes = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.hashes += [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in x]
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(out: str, source: str, path: str) -> None:
    L.seed_everything(0)
    data = SyntheticMixDataModule(Data(), ratio=0.5, **{source: path})
    model = Model()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(model.hashes))
    # as `medaug` does at exit: a rank leaving with the group alive now and then aborts in gloo's teardown
    # ("terminate called without an active exception") after a finished fit
    close_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
