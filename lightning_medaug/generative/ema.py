"""Exponential moving average of a network's weights, for GAN generators and diffusion models.

A thin layer over ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (the
PyTorch-maintained EMA), adding a warm-up so the average is not dominated by random init
(decay ``min(decay, (1 + step) / (10 + step))``, as in diffusers' ``EMAModel``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA", "EMASampling"]


class EMA(nn.Module):
    """Keeps ``self.module`` as the EMA of a source network; call :meth:`update` after each step.

    Registered as a submodule, so the average is saved in checkpoints and ``save_pretrained``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._multi_avg, use_buffers=True)
        self.averaged.requires_grad_(False)

    def _multi_avg(self, ema_params, current_params, num_averaged):
        step = int(num_averaged)
        decay = min(self.decay, (1 + step) / (10 + step))
        if torch.is_tensor(ema_params[0]) and ema_params[0].is_floating_point():
            torch._foreach_lerp_(ema_params, current_params, 1.0 - decay)
        else:
            for e, c in zip(ema_params, current_params):
                e.copy_(c)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average."""
        self.averaged.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        """The averaged network, ready for ``forward``."""
        return self.averaged.module

    def forward(self, *args, **kwargs):
        return self.averaged.module(*args, **kwargs)


class EMASampling:
    """Mixin of GAN modules holding a ``generator`` and ``ema``, an :class:`EMA` of it or ``None``:
    they sample from the average when they keep one (Karras et al. 2018)."""

    ema_pair = ("generator", "ema")

    generator: nn.Module
    ema: EMA | None

    @property
    def sampling_network(self) -> nn.Module:
        """The network :meth:`sample` uses: the EMA generator when enabled."""
        return self.ema.module if self.ema is not None else self.generator

    def update_ema(self) -> None:
        """Blend the generator's new weights into its EMA, if one is kept; call after each generator step."""
        if self.ema is not None:
            self.ema.update(self.generator)
