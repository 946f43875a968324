"""The plain PyTorch loop that figure 4 (``train_overhead.py``) sets beside ``L.Trainer``.

What the Trainer does per batch, written out by hand on the very same module: for automatic
optimisation, ``training_step``, ``zero_grad``, ``backward``, the optimizer's ``step`` and the
``on_train_batch_end`` hook; for manual optimisation (the GANs), the module's own
``training_step``, run with :class:`PlainManualOptimisation` standing in for the few
``LightningModule`` methods that need a Trainer (``optimizers``, ``toggle_optimizer``,
``untoggle_optimizer``, ``manual_backward``, ``clip_gradients``): each does there what a hand-written
GAN loop does (raw optimizers, ``requires_grad`` switched off on the other network's weights,
``loss.backward()``, ``clip_grad_norm_``). Every line of the step that is ours runs unchanged on
both sides; what differs is what Lightning adds around it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch
from unet_efficiency import precision_context, synchronize

#: the LightningModule methods of manual optimisation that read the Trainer
MANUAL_OPTIMISATION_METHODS = ("optimizers", "toggle_optimizer", "untoggle_optimizer", "manual_backward",
                               "clip_gradients")


def optimizers_of(configured: Any) -> list[torch.optim.Optimizer]:
    """The optimizers of ``configure_optimizers()``'s answer (an optimizer, a list or a dict; no schedulers)."""
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    if isinstance(configured, (list, tuple)) and configured:
        return [opt for item in configured for opt in optimizers_of(item)]
    raise ValueError(f"the plain loop handles optimizers, lists and dicts of them; got {type(configured)}")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return [v.to(device, non_blocking=True) if torch.is_tensor(v) else v for v in batch]


class PlainManualOptimisation:
    """Plain PyTorch in place of what manual optimisation asks of a Trainer (see the module docstring)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.opts = optimizers
        self._frozen: dict[torch.Tensor, bool] = {}

    def optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        return self.opts[0] if len(self.opts) == 1 else self.opts

    def toggle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        # as Lightning: only this optimizer's weights take gradients; the others' flags are kept to restore
        own = {p for group in optimizer.param_groups for p in group["params"]}
        for opt in self.opts:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p not in own and p not in self._frozen:
                        self._frozen[p] = p.requires_grad
                        p.requires_grad = False

    def untoggle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for p, requires_grad in self._frozen.items():
            p.requires_grad = requires_grad
        self._frozen = {}

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    @contextlib.contextmanager
    def attached(self, model: L.LightningModule) -> Iterator[None]:
        """The stand-in's methods on ``model`` (instance attributes) for the ``with`` block only."""
        for name in MANUAL_OPTIMISATION_METHODS:
            setattr(model, name, getattr(self, name))
        try:
            yield
        finally:
            for name in MANUAL_OPTIMISATION_METHODS:
                delattr(model, name)


def plain_epoch(model: L.LightningModule, loader: Iterable, max_batches: int | None, precision: str,
                device: torch.device, first_batch_ms: list[float] | None = None) -> None:
    """One epoch (or ``max_batches``) of ``model`` on ``loader`` without a Trainer.

    ``first_batch_ms`` collects the first batch's milliseconds, the device synchronised.
    """
    model.to(device).train()
    opts = optimizers_of(model.configure_optimizers())
    manual = PlainManualOptimisation(opts)
    synchronize(device)
    start = time.perf_counter()
    with contextlib.nullcontext() if model.automatic_optimization else manual.attached(model):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = to_device(batch, device)
            with precision_context(precision, device):
                loss = model.training_step(batch, i)
            if model.automatic_optimization:
                if len(opts) != 1:
                    raise ValueError(f"automatic optimisation with {len(opts)} optimizers is not supported here")
                opts[0].zero_grad(set_to_none=True)
                loss.backward()
                opts[0].step()
            model.on_train_batch_end(loss, batch, i)
            if i == 0 and first_batch_ms is not None:
                synchronize(device)
                first_batch_ms.append(1000 * (time.perf_counter() - start))


def released_plain_epoch(model: L.LightningModule, loader: Iterable, max_batches: int | None, precision: str,
                         device: torch.device) -> None:
    """The plain loop plus the memory handling a Lightning fit adds on CUDA: Lightning's own
    ``_clear_cuda_memory`` (caching allocator and cuBLAS workspaces emptied) before and after, and
    the model back on the CPU after, as the strategy's teardown does. The same as the plain loop on a CPU."""
    release_cuda_memory(device)
    plain_epoch(model, loader, max_batches, precision, device)
    model.cpu()
    release_cuda_memory(device)


def release_cuda_memory(device: torch.device) -> None:
    if device.type == "cuda":
        from lightning.fabric.accelerators.cuda import _clear_cuda_memory

        _clear_cuda_memory()
