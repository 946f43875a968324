"""Callbacks for training: stop cleanly on a non-finite loss, resume with the same random stream,
draw sample grids.

Images are logged from callbacks, not from the modules (Lightning's ``examples/pytorch``), so
every family gets the same pictures without a line of its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.rendering.grid import make_grid_array, save_image_grid

__all__ = ["FiniteLossGuard", "NonFiniteLossError", "RandomStateCheckpoint", "SampleGridCallback"]


class NonFiniteLossError(ValueError, FloatingPointError):
    """The training loss became NaN or infinite (a ``ValueError``, so the CLI prints one line)."""


class FiniteLossGuard(L.Callback):
    """Stop training with :class:`NonFiniteLossError` as soon as a training loss or weight is NaN or Inf.

    The loss is checked in ``on_before_backward``, i.e. before the broken gradients reach the
    weights, for automatic and manual optimization alike (``manual_backward`` calls the same
    hook); logged ``train/loss*`` values and the weights (a finite loss can still give infinite
    gradients) are checked at the end of every batch. The error is raised before any checkpoint
    callback runs for that step, so no checkpoint of the broken model is written: the last one on
    disk is the last good one. Under DDP the decision is shared by all ranks, so they stop together
    instead of waiting for each other.

    Args:
        prefix: logged metrics whose name starts with this are checked at batch end.
        check_weights: also check the weights after each batch (one fused norm of the parameters,
            read in the same host sync as the batch's losses).
    """

    def __init__(self, prefix: str = "train/loss", check_weights: bool = True):
        self.prefix = prefix
        self.check_weights = check_weights

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self._check(trainer, {"loss": loss})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        values: dict[str, Any] = {}
        if isinstance(outputs, Tensor):
            values["loss"] = outputs
        elif isinstance(outputs, Mapping) and "loss" in outputs:
            values["loss"] = outputs["loss"]
        values.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)})
        self._check(trainer, values, pl_module.parameters() if self.check_weights else ())

    def _check(self, trainer: L.Trainer, values: Mapping[str, Any], weights: Iterable[Tensor] = ()) -> None:
        bad = _non_finite(values, weights)
        # One collective per check under DDP (a no-op on one device): any rank's NaN stops every rank.
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            return
        what = ", ".join(bad) if bad else "the loss on another process"
        raise NonFiniteLossError(
            f"loss became NaN or infinite ({what}) at step {trainer.global_step}; lower the learning rate or "
            "enable gradient clipping (trainer.gradient_clip_val); no checkpoint was written for this step"
        )


#: how :meth:`FiniteLossGuard._check` names the weights when one of them is NaN or infinite
WEIGHTS = "weights after the optimizer step"


def _non_finite(values: Mapping[str, Any], weights: Iterable[Tensor] = ()) -> list[str]:
    """Names of the values that are NaN or infinite, plus :data:`WEIGHTS` when an element of ``weights`` is.

    One host sync for all tensors together when everything is finite (every batch): a device
    sync per value, and a pass per weight tensor, cost more than a small model's step.
    """
    flags: dict[str, bool | Tensor] = {name: _finite_flag(value) for name, value in values.items()}
    weights = [w.detach() for w in weights if w.is_floating_point() and w.numel()]
    if weights:
        # A NaN or infinite element makes its tensor's 2-norm NaN or infinite: one fused kernel on a GPU.
        flags[WEIGHTS] = torch.stack(torch._foreach_norm(weights, 2)).isfinite().all()
    on_device = [flag for flag in flags.values() if isinstance(flag, Tensor)]
    if on_device and bool(torch.stack([flag.to(on_device[0].device) for flag in on_device]).all()):
        return [name for name, flag in flags.items() if flag is False]
    bad = [name for name, flag in flags.items() if not bool(flag)]
    if WEIGHTS in bad and _all_finite(weights):  # a norm that overflowed: huge weights, but finite ones
        bad.remove(WEIGHTS)
    return bad


def _finite_flag(value: Any) -> bool | Tensor:
    """Whether ``value`` is finite: a 0-dim bool tensor, on its device, for a tensor; a bool otherwise."""
    if isinstance(value, Tensor):
        return torch.isfinite(value.detach()).all()
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: nothing to check


def _all_finite(tensors: Iterable[Tensor]) -> bool:
    """Element by element: the exact check, for the rare batch whose weight norms are not finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class RandomStateCheckpoint(L.Callback):
    """Save the global random state in every checkpoint and restore it on resume.

    Lightning's checkpoints hold weights, optimizer and loop state but not the random streams of
    torch (CPU and the current CUDA device), numpy and Python, which decide the data order of
    shuffled loaders and the noise of generators. With this callback, a run resumed from a
    checkpoint taken at an epoch boundary continues bit-identically (on CPU, at a fixed thread
    count). Validation inside ``fit`` runs on a side branch of the stream: the state at the end of
    the last training batch is put back when it ends, because a resumed run skips the validation
    that followed its checkpoint. Mid-epoch checkpoints resume with the right step count but
    Lightning restarts the epoch's (non-stateful) loader, so the rest of that epoch sees other
    batches. Only rank 0's state is saved; every rank gets it back, as after ``seed_everything``.
    The ``medaug`` CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        self._after_batch: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._after_batch = random_state()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._after_batch is not None:
            set_random_state(self._after_batch)

    def state_dict(self) -> dict[str, Any]:
        return random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_random_state(state_dict)


def random_state() -> dict[str, Any]:
    """The global random state as tensors and plain numbers (loads with ``weights_only=True``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only: no new CUDA contexts
    return state


def set_random_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`random_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class SampleGridCallback(L.Callback):
    """Every ``every_n_epochs`` training epochs, draw a fixed-seed sample grid and save it as a PNG.

    Calls ``pl_module.sample(num_samples, labels=..., masks=..., generator=...)`` in eval mode with
    class-balanced labels (``0, 1, ..., num_classes - 1, 0, 1, ...``) for class-conditional
    generators and the masks of the first validation batch (or training batch when there is no
    validation) for mask-conditional ones. The same seed every epoch makes grids comparable over
    training. Writes ``samples_epoch{E:03d}.png`` into ``dirpath`` (default:
    ``<trainer.log_dir>/samples``) and logs the grid to every :class:`WandbLogger` as ``samples``.

    Args:
        every_n_epochs: draw after every N-th training epoch.
        num_samples: images per grid.
        seed: seed of the sampling ``torch.Generator``.
        dirpath: folder for the PNGs.
        scale: nearest-neighbour magnification of each tile in the PNG.
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 16, seed: int = 0, dirpath: str | None = None,
                 scale: int = 2):
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if scale < 1:
            raise ValueError(f"scale must be at least 1, got {scale}")
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.dirpath, self.scale = dirpath, scale
        self._masks: Tensor | None = None
        self.last_path: Path | None = None

    def folder(self, trainer: L.Trainer) -> Path:
        """Where the grids go."""
        return Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0 or trainer.sanity_checking:
            return
        folder = self.folder(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self.last_path = self._draw(trainer, pl_module, folder)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> Path:
        num_classes = int(getattr(pl_module, "num_classes", 0))
        labels = torch.arange(self.num_samples, device=pl_module.device) % num_classes if num_classes > 0 else None
        masks = self._fixed_masks(trainer, pl_module) if getattr(pl_module, "requires_masks", False) else None
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        modes = {name: module.training for name, module in pl_module.named_modules()}
        pl_module.eval()
        try:
            images = pl_module.sample(self.num_samples, labels=labels, masks=masks, generator=generator)
        finally:
            # restore per module: some families keep frozen parts (a first stage) in eval mode
            for name, module in pl_module.named_modules():
                module.training = modes.get(name, module.training)
        epoch = trainer.current_epoch
        captions = labels.tolist() if labels is not None else None
        path = save_image_grid(images, folder / f"samples_epoch{epoch:03d}.png", labels=captions, scale=self.scale)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                array = make_grid_array(images, labels=captions, scale=self.scale)
                logger.log_image(key="samples", images=[array], step=trainer.global_step, caption=[f"epoch {epoch}"])
        return path

    def _fixed_masks(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
        """``num_samples`` masks from the first validation (else training) batch, cached and cycled."""
        if self._masks is None:
            loaders = trainer.val_dataloaders if trainer.val_dataloaders is not None else trainer.train_dataloader
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            if loader is None:
                raise ValueError("SampleGridCallback needs a dataloader with masks for a mask-conditional generator")
            mask = unpack_batch(next(iter(loader))).mask
            if mask is None:
                raise ValueError(f"{type(pl_module).__name__} needs masks but the batches have no 'mask' entry")
            reps = math.ceil(self.num_samples / mask.shape[0])
            self._masks = mask.repeat((reps,) + (1,) * (mask.ndim - 1))[: self.num_samples].float()
        return self._masks.to(pl_module.device)
