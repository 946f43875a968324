"""The site's side of a federation: a Flower ``ClientApp`` that trains the family's own LightningModule.

Each round a site builds the generator from the federation's settings (sent by the server with the
round), loads the global weights and what it kept itself (:mod:`.parameters`), trains for
``local_epochs`` under a Lightning ``Trainer`` on its own images and replies with the weights the
server averages, its number of images and, under differential privacy, the epsilon it has spent.
Images, labels, per-image losses and the site's own parts (a GAN's discriminator, the privacy
accountant) never leave it.

A site is configured by its Flower node config:

* ``partition-id`` / ``num-partitions``: which share of the federation's data set it trains on
  (simulated sites, :func:`~.sites.site_indices`);
* ``data-config``: a YAML file with the site's own data module (``class_path`` / ``init_args``),
  for a real site, which then trains on all of that module's training split;
* ``site-name``: the name the server reports (default ``site-<partition-id>``);
* ``site-dir``: the folder the site keeps its state in (default: the server's ``sites-dir``, for
  sites simulated on the server's machine).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lightning_medaug.federated.parameters import (
    ProximalPull,
    load_local_state,
    load_shared_state,
    save_local_state,
    shared_state,
)
from lightning_medaug.federated.secure import secure_aggregation_mod
from lightning_medaug.federated.settings import FederationSettings, build_datamodule
from lightning_medaug.federated.sites import SiteDataModule, dataset_labels, site_indices, site_summary
from lightning_medaug.generative.privacy import DifferentialPrivacy
from lightning_medaug.generative.privacy_accounting import calibrate_noise

__all__ = ["PRIVACY_STATE", "Site", "client_app", "settings_of"]

#: File in a site's folder with its privacy accountant's history (it composes over rounds and restarts).
PRIVACY_STATE = "privacy_state.json"


@dataclass
class Site:
    """One site as its node config describes it: its name, folder and training data."""

    name: str
    folder: Path
    datamodule: SiteDataModule

    @classmethod
    def from_context(cls, settings: FederationSettings, context: Context, config: ConfigRecord) -> Site:
        node = dict(context.node_config)
        index = int(node.get("partition-id", 0))
        name = str(node.get("site-name", f"site-{index}"))
        folder = node.get("site-dir") or (Path(str(config["sites-dir"])) / name if "sites-dir" in config else None)
        if folder is None:
            raise ValueError(f"site {name}: set site-dir in its node config (where the site keeps its state)")
        if node.get("data-config"):
            path = Path(str(node["data-config"]))
            if not path.is_file():
                raise FileNotFoundError(f"site {name}: data-config {path} not found")
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            spec = spec.get("data", spec) if isinstance(spec, dict) else spec
            return cls(name, Path(folder), SiteDataModule(build_datamodule(spec)))
        parts = int(node.get("num-partitions", settings.num_sites))
        if parts != settings.num_sites or not 0 <= index < parts:
            raise ValueError(f"site {name}: partition {index} of {parts} does not fit a federation of "
                             f"{settings.num_sites} sites")
        full = build_datamodule(settings.data)
        full.prepare_data()
        full.setup("fit")
        labels = dataset_labels(full.train_dataset)
        keys = np.zeros(len(full.train_dataset)) if labels is None else labels
        indices = site_indices(keys, settings.num_sites, settings.split, settings.alpha, settings.seed,
                               settings.min_per_site)[index]
        return cls(name, Path(folder), SiteDataModule(full, indices))


def settings_of(message: Message) -> tuple[FederationSettings, ConfigRecord]:
    """The federation's settings and the round's config sent with ``message``."""
    config = message.content["config"]
    return FederationSettings.from_json(str(config["federation"])), config


def client_app(mods: Sequence[Any] = ()) -> ClientApp:
    """The Flower ``ClientApp`` of a site; ``mods`` are further Flower client mods.

    It answers secure aggregation (:func:`~.secure.secure_aggregation_mod`, outermost) when the server
    runs it; ``mods`` and the training below see the round's usual message either way.
    """
    app = ClientApp(mods=[secure_aggregation_mod, *mods])

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        """Before round 1: what the site holds (image shape, classes, size), for the server's check."""
        settings, config = settings_of(message)
        site = Site.from_context(settings, context, config)
        summary = {"site": site.name, **site_summary(site.datamodule)}
        return Message(RecordDict({"site": ConfigRecord({"summary": json.dumps(summary)})}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        settings, config = settings_of(message)
        site = Site.from_context(settings, context, config)
        metrics = train_round(settings, site, message.content["arrays"], int(config["server-round"]),
                              float(config.get("proximal-mu", 0.0)))
        model_state, numbers = metrics
        return Message(RecordDict({"arrays": ArrayRecord(model_state), "metrics": MetricRecord(numbers)}),
                       reply_to=message)

    return app


def train_round(settings: FederationSettings, site: Site, arrays: ArrayRecord, server_round: int,
                proximal_mu: float = 0.0) -> tuple[dict, dict[str, float]]:
    """Train the site's copy of the global model for one round; returns its shared weights and metrics."""
    model = settings.build_generator()
    load_local_state(model, site.folder)  # what the site kept (its discriminator), before the global weights
    global_state = arrays.to_torch_state_dict()
    load_shared_state(model, global_state)
    callbacks: list[L.Callback] = []
    if proximal_mu > 0:
        callbacks.append(ProximalPull(global_state, proximal_mu))
    privacy = _site_privacy(settings, site) if settings.privacy else None
    if privacy is not None:
        callbacks.append(privacy)
    steps = RoundSteps(site.folder, server_round)
    callbacks.append(steps)  # after DP: DP plans its round from the round's own steps, before the count moves on
    optimizers = SiteOptimizerState(site.folder, server_round)
    callbacks.append(optimizers)  # after DP too: DP wraps the optimizer whose moments are restored
    # a different stream per site and round, the same on every rerun
    L.seed_everything((settings.seed + 7919 * server_round + 104729 * _index(site.name)) % 2**32, verbose=False)
    trainer = L.Trainer(**{"accelerator": "auto", "devices": 1, **settings.trainer},
                        max_epochs=settings.local_epochs, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(site.folder / "trainer"))
    trainer.fit(model, datamodule=site.datamodule)
    save_local_state(model, site.folder, settings.average_training_parts)
    steps.record(trainer)
    optimizers.save(trainer)
    numbers = {"num-examples": len(site.datamodule.train_dataset), "global-step": trainer.global_step}
    loss = trainer.callback_metrics.get("train/loss")
    numbers["train-loss"] = float(loss) if loss is not None else math.nan
    if privacy is not None:
        _write_json(site.folder / PRIVACY_STATE, privacy.state_dict())
        numbers.update(epsilon=float(privacy.epsilon), delta=float(privacy.delta), steps=privacy.steps)
    return shared_state(model, settings.average_training_parts), numbers


class RoundSteps(L.Callback):
    """Continues a site's optimiser-step count over the rounds: each round's ``Trainer`` starts where the
    site's earlier rounds left off (``(round - 1)`` times the steps of one round), so the schedules that
    read ``global_step`` (a VAE's KL warm-up, a KL autoencoder's adversarial start, StyleGAN2's lazy
    regularisation) run once over the federation, as in central training, instead of restarting every
    round. One round's steps are recorded in the site's folder after its first round (a rerun of a round
    starts at the same count); a site without the record yet estimates them from the round's batches."""

    FILE = "round_steps.json"

    def __init__(self, folder: Path, server_round: int):
        self.folder, self.server_round, self.start = folder, server_round, 0
        path = folder / self.FILE
        self.per_round = json.loads(path.read_text(encoding="utf-8"))["steps_per_round"] if path.is_file() else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_round = self.per_round
        if per_round is None:  # a site's first round (or its first after missing the earlier ones)
            per_round = int(trainer.estimated_stepping_batches) * (
                1 if pl_module.automatic_optimization else len(trainer.optimizers))
        self.start = (self.server_round - 1) * per_round
        loop = trainer.fit_loop.epoch_loop  # Lightning keeps global_step in its loops' progress counters
        for tracker in (loop.automatic_optimization.optim_progress.optimizer.step.total,
                        loop.manual_optimization.optim_step_progress.total):
            tracker.ready = tracker.completed = self.start

    def record(self, trainer: L.Trainer) -> None:
        """Write one round's steps, measured, once."""
        if self.per_round is None and trainer.global_step > self.start:
            _write_json(self.folder / self.FILE, {"steps_per_round": trainer.global_step - self.start})


class SiteOptimizerState(L.Callback):
    """Keeps a site's optimiser state (Adam's moments) from one round to the next, at the site.

    Each round builds a fresh ``Trainer`` and so a fresh optimiser; a fresh Adam's first steps move every
    weight by about the learning rate whatever its gradient, once per round. With a few steps a round
    that jolt dominates: a cVAE trained in 10 one-epoch rounds at a single site (no averaging at all)
    drew one image per class (FD 222, recall 0) where 10 epochs in one run drew varied ones (FD 149).
    The moments are the site's own and never leave it."""

    def __init__(self, folder: Path, server_round: int):
        # per round: a round run again (a server resumed after a kill) starts from the round before's state
        self.folder, self.server_round = folder, server_round

    def _path(self, server_round: int) -> Path:
        return self.folder / f"optimizer_state_round{server_round}.pt"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(self.server_round - 1)
        if path.is_file():
            states = torch.load(path, map_location="cpu", weights_only=True)
            if len(states) == len(trainer.optimizers):
                for optimizer, state in zip(trainer.optimizers, states, strict=True):
                    optimizer.load_state_dict(state)

    def save(self, trainer: L.Trainer) -> None:
        path = self._path(self.server_round)
        tmp = path.with_name(path.name + ".tmp")
        torch.save([optimizer.state_dict() for optimizer in trainer.optimizers], tmp)
        tmp.replace(path)
        self._path(self.server_round - 2).unlink(missing_ok=True)  # the two latest are all a rerun needs


def _site_privacy(settings: FederationSettings, site: Site) -> DifferentialPrivacy:
    """The site's DP-SGD callback, its accountant carrying the history of the earlier rounds.

    With ``target_epsilon`` alone, the noise is calibrated once, to every round's steps (the
    callback alone would calibrate it to one round's and overspend), and kept for later rounds.
    """
    options = dict(settings.privacy or {})
    state_file = site.folder / PRIVACY_STATE
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else None
    n = len(site.datamodule.train_dataset)
    if options.get("noise_multiplier") is None:
        if state and state.get("noise_multiplier") is not None:
            options["noise_multiplier"] = state["noise_multiplier"]
        else:
            per_epoch = len(site.datamodule.train_dataloader())
            limit = settings.trainer.get("limit_train_batches")
            if isinstance(limit, int):
                per_epoch = min(per_epoch, limit)
            elif isinstance(limit, float):
                per_epoch = max(1, int(per_epoch * limit))
            delta = options.get("target_delta") or 1.0 / (10 * n)
            options["noise_multiplier"] = _calibrated_noise(
                options.get("accountant", "rdp"), options["target_epsilon"], delta,
                1.0 / len(site.datamodule.train_dataloader()), settings.num_rounds * settings.local_epochs * per_epoch)
    callback = DifferentialPrivacy(**options)
    if state:
        callback.load_state_dict(state)
    return callback


@functools.lru_cache(maxsize=64)
def _calibrated_noise(accountant: str, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    # Opacus' search takes seconds; sites simulated in one process with equal shares ask the same question
    return calibrate_noise(accountant, target_epsilon, delta, sample_rate, steps)


def _index(name: str) -> int:
    return sum(ord(c) * 31 ** i for i, c in enumerate(name)) % 1_000_003


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2), encoding="utf-8")
    tmp.replace(path)
