"""What of a generator the sites average and what each keeps, and FedProx's pull towards the global weights.

One rule for every family, read from what the family already declares about itself
(:attr:`~lightning_medaug.generative.base.GenerativeModule.training_only_modules`):

================================  ===========================================================
part                              handled
================================  ===========================================================
the networks ``sample`` uses      averaged (cGAN/DCGAN/StyleGAN generator, VAE encoder and
                                  decoder, DDPM UNet)
EMA copies (GANs, DDPM ``ema``)   averaged: the mean of the sites' EMAs, which all started the
                                  round from the same global EMA, is the EMA of the mean weights
batch-norm running statistics     averaged, as FedAvg does (FedBN, Li et al. 2021, would keep
                                  them local; the exported generator needs one set)
discriminators (GANs, VAE-GAN)    kept at each site by default: a site's critic of its own
                                  images never leaves it; ``average_training_parts`` averages them
integer buffers (EMA and          kept at each site: counters, not weights
batch-norm step counters)
optimizer state                   restarted each round (each round is a new ``Trainer``)
================================  ===========================================================

What a site keeps lies in its own folder (:func:`save_local_state`), so it survives a restart
of the site's process as of the server's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightning_medaug.generative.base import GenerativeModule

__all__ = ["LOCAL_STATE", "ProximalPull", "load_local_state", "load_shared_state", "local_keys", "part_names",
           "save_local_state", "shared_state"]

#: File in a site's folder with the weights the site keeps.
LOCAL_STATE = "local_state.safetensors"


def local_keys(model: GenerativeModule, average_training_parts: bool = False) -> set[str]:
    """State-dict keys each site keeps: training-only parts (unless averaged) and integer buffers."""
    prefixes = () if average_training_parts else tuple(f"{name}." for name in model.training_only_modules)
    return {key for key, value in model.state_dict().items()
            if key.startswith(prefixes) or not value.is_floating_point()}


def part_names(model: GenerativeModule, average_training_parts: bool = False) -> dict[str, list[str]]:
    """The generator's top-level parts the sites ``averaged`` and those ``kept_at_sites`` (integer
    counters aside), for the federation's record."""
    local = local_keys(model, average_training_parts)
    state = model.state_dict()
    averaged = {k.split(".")[0] for k in state if k not in local}
    kept = {k.split(".")[0] for k in local if state[k].is_floating_point()}
    return {"averaged": sorted(averaged), "kept_at_sites": sorted(kept)}


def shared_state(model: GenerativeModule, average_training_parts: bool = False) -> dict[str, Tensor]:
    """The weights the server averages, as float32 CPU tensors (the wire format of the round)."""
    local = local_keys(model, average_training_parts)
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k not in local}


def load_shared_state(model: GenerativeModule, state: dict[str, Tensor]) -> None:
    """Load averaged weights into ``model``; every key must be one of its shared keys."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"the global weights hold keys this {type(model).__name__} does not have: {unknown[:3]}; "
                         "every site must run the federation's generator settings")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def save_local_state(model: GenerativeModule, folder: Path, average_training_parts: bool = False) -> None:
    """Write the weights the site keeps into ``folder``, atomically."""
    keys = local_keys(model, average_training_parts)
    if not keys:
        return
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in keys}
    tmp = folder / (LOCAL_STATE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / LOCAL_STATE)


def load_local_state(model: GenerativeModule, folder: Path) -> bool:
    """Load what the site kept from an earlier round; ``False`` when it has nothing yet (round 1)."""
    path = folder / LOCAL_STATE
    if not path.is_file():
        return False
    model.load_state_dict(load_file(str(path)), strict=False)
    return True


class ProximalPull(L.Callback):
    """FedProx's proximal term (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys
    2020) as a decoupled step: after each optimizer step, every shared weight ``w`` moves towards the
    round's global weight ``g`` by ``lr * mu * (w - g)``.

    This is the gradient step of ``mu / 2 * ||w - g||^2`` taken apart from the loss's, as AdamW
    decouples weight decay, so it works the same for automatic and manual (GAN) optimization and
    under DP-SGD, where Opacus recomputes the gradients from per-example ones and would drop a term
    added to them. It reads no data, so it costs no privacy.

    Args:
        global_state: the round's global weights (:func:`shared_state` of the model as received).
        mu: the proximal weight (> 0).
    """

    def __init__(self, global_state: dict[str, Tensor], mu: float):
        if not mu > 0:
            raise ValueError(f"the proximal weight mu must be positive, got {mu}")
        self.global_state, self.mu = global_state, float(mu)
        self._pairs: list[tuple[Tensor, Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = dict(pl_module.named_parameters())
        self._pairs = [(params[k], g.to(params[k].device, params[k].dtype))
                       for k, g in self.global_state.items() if k in params and params[k].requires_grad]

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        for weight, anchor in self._pairs:
            weight.sub_(weight - anchor, alpha=lr * self.mu)
