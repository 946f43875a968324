"""Exponential moving average of a network's weights, for GAN generators and diffusion models.

The average lives in a ``torch.optim.swa_utils.AveragedModel`` (its ``module`` and the
``n_averaged`` count, so checkpoints keep their keys), with a warm-up so the average is not
dominated by random init (decay ``min(decay, (1 + step) / (10 + step))``, as in diffusers'
``EMAModel``). The update is ours: ``AveragedModel.update_parameters`` walks the tensors one by
one in Python and reads ``n_averaged`` on the host three times per call, each read a device sync
on a GPU; here every tensor is blended by one ``torch._foreach_lerp_`` (as timm's ``ModelEmaV3``
does) and the count is mirrored on the host, so an update never waits for the device.
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
        self.averaged = AveragedModel(model, use_buffers=True)
        self.averaged.requires_grad_(False)
        self._updates: int | None = 0  # the host's copy of ``n_averaged``; None: read it at the next update

    def decay_at(self, step: int) -> float:
        """The decay of the ``step``-th update after the first (warm-up: ``(1 + step) / (10 + step)``)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (the first update copies them).

        Floating-point parameters and buffers are averaged; integer buffers (a batch norm's
        ``num_batches_tracked``) are copied.
        """
        if self._updates is None:  # after a state dict was loaded: one read, then the host counts
            self._updates = int(self.averaged.n_averaged)
        averaged = [*self.averaged.module.parameters(), *self.averaged.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        if len(averaged) != len(current):
            raise ValueError(f"the EMA holds {len(averaged)} tensors but the network has {len(current)}: "
                             "update it with the network it was built from")
        if self._updates == 0:
            _foreach_copy(averaged, current)
        else:
            floats = [a.is_floating_point() for a in averaged]
            blended = [a for a, f in zip(averaged, floats) if f], [c for c, f in zip(current, floats) if f]
            if blended[0]:
                torch._foreach_lerp_(*blended, 1.0 - self.decay_at(self._updates))
            _foreach_copy([a for a, f in zip(averaged, floats) if not f],
                          [c for c, f in zip(current, floats) if not f])
        self.averaged.n_averaged.add_(1)  # on the device, no sync: checkpoints keep the count
        self._updates += 1

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._updates = None  # the loaded n_averaged rules from now on

    @property
    def module(self) -> nn.Module:
        """The averaged network, ready for ``forward``."""
        return self.averaged.module

    def forward(self, *args, **kwargs):
        return self.averaged.module(*args, **kwargs)


def _foreach_copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    if targets:  # foreach ops refuse empty lists
        torch._foreach_copy_(targets, sources)


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
