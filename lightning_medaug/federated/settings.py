"""What a federation is: the generator, the data, the sites, the rounds, the strategy and the privacy.

One :class:`FederationSettings` is read by the server from the command's YAML and sent, as JSON,
to every site with each round's instructions, so a site needs no file of the federation's own
(only its data, see :mod:`.client`). Everything in it is plain JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L

from lightning_medaug.federated.sites import SPLITS
from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.generative.privacy import ACCOUNTANTS
from lightning_medaug.registry import create_generator
from lightning_medaug.validation import check_at_least, check_choice, check_non_negative, check_positive

__all__ = ["PRIVACY_KEYS", "SECURE_AGGREGATION", "STRATEGIES", "FederationSettings", "build_datamodule"]

#: Server strategies offered (Flower's): FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020),
#: FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).
STRATEGIES = ("fedavg", "fedprox", "fedadam")
#: What ``privacy`` may hold: the arguments of :class:`~lightning_medaug.generative.privacy.DifferentialPrivacy`.
PRIVACY_KEYS = ("target_epsilon", "noise_multiplier", "target_delta", "max_grad_norm", "accountant")
#: What ``secure_aggregation`` may hold, with its defaults: the options of Flower's ``SecAggPlusWorkflow``.
#: Shares go to every site (1.0: all, as plain SecAgg; a federation of hospitals has few) and half of them
#: rebuild a site's masks; the clipping and quantization ranges are Flower's (they bound each site's
#: update of a weight in a round, not the weight, see :mod:`.secure`).
SECURE_AGGREGATION = {"num_shares": 1.0, "reconstruction_threshold": 0.5, "clipping_range": 8.0,
                      "quantization_range": 2**22}


@dataclass
class FederationSettings:
    """A federation of ``num_sites`` sites training one registered generator for ``num_rounds`` rounds.

    Args:
        generator: a registered generator name (``medaug list``), e.g. ``"cvae"``, ``"ddpm"``, ``"cgan"``.
        generator_args: its init arguments (``image_size``, ``num_classes``...).
        data: the real data module as ``{"class_path": ..., "init_args": ...}``; its training split is
            dealt out to the sites (a site with its own data names it in its node config instead).
        num_sites: number of sites.
        split: how the training split is dealt out, one of :data:`~.sites.SPLITS`.
        alpha: Dirichlet concentration of the skewed splits.
        min_per_site: the fewest training images a site may get.
        num_rounds: federated rounds.
        local_epochs: epochs each site trains per round (a Lightning ``Trainer``'s ``max_epochs``).
        strategy: one of :data:`STRATEGIES`.
        proximal_mu: FedProx's proximal weight (``fedprox`` only).
        server_lr: FedAdam's server learning rate (``fedadam`` only).
        min_sites: the fewest sites whose weights a round needs; fewer (sites dropped out) stops the
            federation. ``None``: half of the sites, rounded up.
        average_training_parts: also average the training-only parts (a GAN's discriminator); by
            default each site keeps its own (see :mod:`.parameters`).
        privacy: DP-SGD per site (``target_epsilon``, ``noise_multiplier``, ``target_delta``,
            ``max_grad_norm``, ``accountant``); ``None`` trains without it.
        trainer: further ``Trainer`` arguments for the sites (``accelerator``, ``precision``,
            ``limit_train_batches``...).
        seed: seed of the split, the initial weights and every site's training.
        round_timeout: seconds the server waits for a round's replies.
        secure_aggregation: train the rounds through SecAgg+ (Flower's ``SecAggPlusWorkflow``), so the
            server sees only the weighted sum of the sites' updates; options as in
            :data:`SECURE_AGGREGATION` (``{}``: its defaults); ``None`` sends each site's weights in the clear.
    """

    generator: str
    data: dict[str, Any]
    generator_args: dict[str, Any] = field(default_factory=dict)
    num_sites: int = 2
    split: str = "iid"
    alpha: float = 0.5
    min_per_site: int = 1
    num_rounds: int = 3
    local_epochs: int = 1
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 0.01
    min_sites: int | None = None
    average_training_parts: bool = False
    privacy: dict[str, Any] | None = None
    trainer: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    round_timeout: float = 3600.0
    secure_aggregation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_at_least(1, num_sites=self.num_sites, num_rounds=self.num_rounds, local_epochs=self.local_epochs,
                       min_per_site=self.min_per_site)
        check_choice("split", self.split, SPLITS)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_positive(alpha=self.alpha, server_lr=self.server_lr, round_timeout=self.round_timeout)
        check_non_negative(proximal_mu=self.proximal_mu)
        if not isinstance(self.data, dict) or "class_path" not in self.data:
            raise ValueError(f"data must be a data module as {{class_path: ..., init_args: ...}}, got {self.data!r}")
        if self.min_sites is None:
            self.min_sites = math.ceil(self.num_sites / 2)
        if not 1 <= self.min_sites <= self.num_sites:
            raise ValueError(f"min_sites must lie in 1..num_sites={self.num_sites}, got {self.min_sites}")
        if self.privacy is not None:
            unknown = sorted(set(self.privacy) - set(PRIVACY_KEYS))
            if unknown:
                raise ValueError(f"privacy has unknown keys {unknown}; it takes {', '.join(PRIVACY_KEYS)}")
            check_choice("privacy.accountant", self.privacy.get("accountant", "rdp"), ACCOUNTANTS)
            if self.privacy.get("target_epsilon") is None and self.privacy.get("noise_multiplier") is None:
                raise ValueError("privacy needs target_epsilon (the noise is calibrated to all rounds) or "
                                 "noise_multiplier, or both")
        if self.secure_aggregation is not None:
            self.secure_aggregation = _secure_aggregation_options(self.secure_aggregation, self.num_sites,
                                                                  self.min_sites)
        for key in ("max_epochs", "max_steps", "callbacks", "logger", "default_root_dir"):
            if key in self.trainer:
                raise ValueError(f"trainer.{key} is set by the federation (local_epochs, the site's folder): "
                                 "remove it")

    # -- what it builds --------------------------------------------------------------------------
    def build_generator(self) -> GenerativeModule:
        """A fresh generator; the seed makes every site and the server start from the same weights."""
        L.seed_everything(self.seed, verbose=False)
        return create_generator(self.generator, **self.generator_args)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FederationSettings:
        return cls(**json.loads(text))


def _secure_aggregation_options(options: dict[str, Any], num_sites: int, min_sites: int) -> dict[str, Any]:
    """The SecAgg+ options with their defaults, checked by Flower's own workflow."""
    if not isinstance(options, dict):
        raise ValueError(f"secure_aggregation must be a mapping of {', '.join(SECURE_AGGREGATION)} (or {{}}), "
                         f"got {options!r}")
    unknown = sorted(set(options) - set(SECURE_AGGREGATION))
    if unknown:
        raise ValueError(f"secure_aggregation has unknown keys {unknown}; it takes {', '.join(SECURE_AGGREGATION)}")
    options = {**SECURE_AGGREGATION, **options}
    if isinstance(options["clipping_range"], bool) or not isinstance(options["clipping_range"], (int, float)):
        raise ValueError(f"secure_aggregation.clipping_range must be a number, got {options['clipping_range']!r}")
    options["clipping_range"] = float(options["clipping_range"])  # the sites' mod insists on a float
    check_positive(**{"secure_aggregation.clipping_range": options["clipping_range"]})
    if min_sites < 2:
        raise ValueError(f"secure_aggregation needs min_sites >= 2 (got {min_sites}): the sum of one site's "
                         "update is that update")
    threshold = options["reconstruction_threshold"]
    if isinstance(threshold, int) and not isinstance(threshold, bool) and threshold > num_sites:
        raise ValueError(f"secure_aggregation.reconstruction_threshold {threshold} exceeds num_sites={num_sites}: "
                         "no round could rebuild the masks")
    from flwr.server.workflow import SecAggPlusWorkflow

    try:
        workflow = SecAggPlusWorkflow(**options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"secure_aggregation: {str(err).replace('`', '')}") from None
    return {**options, "num_shares": workflow.num_shares,
            "reconstruction_threshold": workflow.reconstruction_threshold}


def build_datamodule(spec: dict[str, Any]) -> L.LightningDataModule:
    """The data module ``{"class_path": ..., "init_args": ...}`` describes (nested class paths too),
    built by jsonargparse as LightningCLI builds a recipe's."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=L.LightningDataModule)
    config = parser.parse_object({"data": spec})
    return parser.instantiate_classes(config).data
