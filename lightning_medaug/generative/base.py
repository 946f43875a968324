"""The one base every generative family builds on.

Contract (see the project's style guide): a generator is a LightningModule that

* records ``spatial_dims``, ``in_channels``, ``image_size`` and ``num_classes`` in its
  hyperparameters, so the bank and the mixer never ask which family they hold;
* answers :meth:`GenerativeModule.sample` with images in the training data's layout
  ((N, C, H, W) or (N, C, D, H, W)) and value range ([-1, 1]);
* saves and loads as a folder with ``config.json`` + ``model.safetensors``
  (:meth:`save_pretrained` / :func:`load_generator`), like diffusers' ``save_pretrained``;
  loading never unpickles anything. The folder is an inference export: it holds what
  ``sample`` needs, not the parts only training uses (discriminators, the live network an EMA
  averages), which stay in Lightning checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from lightning_medaug.compat import attached_trainer
from lightning_medaug.generative.shapes import crop_to, pad_to
from lightning_medaug.generative.term_logging import TermAccumulator, logs_this_batch
from lightning_medaug.registry import GENERATORS
from lightning_medaug.sizes import SizeLike, spatial_size
from lightning_medaug.validation import check_at_least, check_spatial_dims
from lightning_medaug.weights_folder import CONFIG_NAME, WEIGHTS_NAME, write_weights_folder

__all__ = ["CHECKPOINT_KEY", "CONFIG_NAME", "GenerativeModule", "SharedStepModule", "WEIGHTS_NAME", "build_generator",
           "load_generator"]

#: Key under which a registered generator writes what ``config.json`` would hold into its Lightning checkpoints.
CHECKPOINT_KEY = "medaug_generator"



class GenerativeModule(L.LightningModule):
    """Base class of all generators.

    Subclasses call ``super().__init__(spatial_dims, in_channels, image_size, num_classes)`` and
    then ``self.save_hyperparameters()``; their ``__init__`` arguments must be JSON-serialisable
    so that :meth:`save_pretrained` can write them to ``config.json``.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: image channels.
        image_size: side length of every spatial axis, or one per axis ((H, W) or (D, H, W)); a
            family whose networks need other sizes pads inside (:mod:`.shapes`).
        num_classes: number of classes for class conditioning; 0 for an unconditional model.
    """

    #: whether ``sample`` needs ``masks`` (mask -> image models set this to True).
    requires_masks: bool = False
    #: submodules only training uses (discriminators): :meth:`save_pretrained` leaves them out.
    training_only_modules: tuple[str, ...] = ()
    #: ``(live network, its EMA)`` attribute names of a family that samples from the average: with
    #: an EMA the live network is training state too.
    ema_pair: tuple[str, str] | None = None

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, image_size: SizeLike = 32, num_classes: int = 0):
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_at_least(1, in_channels=in_channels)
        #: the size of every spatial axis, a tuple also when ``image_size`` is one int
        self.spatial_size = spatial_size(image_size, spatial_dims)
        #: the grid the networks run on; families whose networks need multiples set it (see pad/crop)
        self.network_size = self.spatial_size
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 (unconditional) or more, got {num_classes}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        # as given (an int stays an int), with JSON's lists made tuples
        self.image_size = image_size if isinstance(image_size, int) else self.spatial_size
        self.num_classes = num_classes
        self._train_terms = TermAccumulator()  # this epoch's training terms (log_terms)
        #: state-dict keys :func:`load_generator` found no weights for (training-only parts of a lean export)
        self.untrained_parts: frozenset[str] = frozenset()

    # -- the contract -------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) or (C, D, H, W)."""
        return (self.in_channels,) + self.spatial_size

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """Shape of one conditioning mask: (1, H, W) or (1, D, H, W)."""
        return (1,) + self.spatial_size

    def pad_to_network(self, x: Tensor) -> Tensor:
        """Images (N, C, *spatial_size) padded to :attr:`network_size` (edge replication, centred)."""
        return pad_to(x, self.network_size)

    def crop_to_image(self, x: Tensor) -> Tensor:
        """Network outputs (N, C, *network_size) cut back to :attr:`spatial_size`."""
        return crop_to(x, self.spatial_size)

    def sample(self, n: int, labels: Tensor | None = None, masks: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` images in [-1, 1] with shape ``(n, *image_shape)``.

        Args:
            n: number of samples.
            labels: int64 (n,) class indices, for class-conditional models; drawn uniformly when
                ``None``.
            masks: float (n, 1, *spatial) in {0, 1}, for mask-conditional models.
            generator: a ``torch.Generator`` on any device; the same seed gives the same images.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    def noise_device(self, generator: torch.Generator | None) -> torch.device:
        """Where to draw random numbers for ``sample``: a ``torch.Generator`` lives on one device, so
        draw there and move the result, and the same seed gives the same samples on any device."""
        return generator.device if generator is not None else self.device

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise of ``shape`` from ``generator``, on this module's device (float32)."""
        return torch.randn(shape, generator=generator, device=self.noise_device(generator)).to(self.device)

    def check_sample_args(self, n: int, labels: Tensor | None, masks: Tensor | None,
                          generator: torch.Generator | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Validate ``sample`` arguments; returns labels and masks on this module's device.

        Families call this first in ``sample``, so errors read the same across the library.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if labels is not None:
            if self.num_classes == 0:
                raise ValueError(f"{type(self).__name__} is unconditional (num_classes=0): "
                                 "it cannot sample given labels")
            labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
            if labels.numel() != n:
                raise ValueError(f"got {labels.numel()} labels for n={n} samples")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got {labels.unique().tolist()}")
        elif self.num_classes > 0:
            gen_device = generator.device if generator is not None else self.device
            labels = torch.randint(0, self.num_classes, (n,), generator=generator, device=gen_device).to(self.device)
        if masks is not None:
            if not self.requires_masks:
                raise ValueError(f"{type(self).__name__} is not mask-conditional: it cannot sample given masks")
            masks = torch.as_tensor(masks, device=self.device).float()
            if tuple(masks.shape) != (n,) + self.mask_shape:
                raise ValueError(f"masks must have shape {(n,) + self.mask_shape}, got {tuple(masks.shape)}")
        elif self.requires_masks:
            raise ValueError(f"{type(self).__name__} is mask-conditional: pass masks of shape {(n,) + self.mask_shape}")
        return labels, masks

    # -- logging ------------------------------------------------------------------------------
    def log_terms(self, stage: str, terms: Mapping[str, Tensor | float], batch_size: int,
                  prog_bar: Collection[str] = ("loss",)) -> None:
        """Log one batch's terms (scalar tensors or numbers) as ``{stage}/{name}``; the names in
        ``prog_bar`` also go to the progress bar.

        Validation and test: every batch, epoch means synced across ranks. Training: summed on
        the device, logged as ``train/{name}_step`` on the batches the loggers write (progress-bar
        terms on every batch while a bar shows them) and as ``train/{name}_epoch`` and
        ``train/{name}`` at the epoch's end (see :mod:`~lightning_medaug.generative.term_logging`).
        """
        if stage != "train":
            for name, value in terms.items():
                self.log(f"{stage}/{name}", _detached(value), on_step=False, on_epoch=True, prog_bar=name in prog_bar,
                         batch_size=batch_size, sync_dist=True)
            return
        self._train_terms.add(terms, batch_size, self.device)  # also without a Trainer: a plain loop pays the same
        trainer = attached_trainer(self)
        if trainer is None:
            return
        every = logs_this_batch(trainer)
        bar = trainer.progress_bar_callback is not None
        for name, value in terms.items():
            if every or (bar and name in prog_bar):
                self.log(f"train/{name}_step", _detached(value), on_step=True, on_epoch=False,
                         prog_bar=name in prog_bar, batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        # Runs before checkpoint and early-stopping callbacks, so they can monitor train/<name>.
        for name, value in self._train_terms.means().items():
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True, prog_bar=name == "loss")
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, logger=False)
        self._train_terms.reset()

    def read_batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """Images and, for class-conditional models, labels of a training batch (any layout
        :func:`~lightning_medaug.data.batch.unpack_batch` reads), checked against this model's shape."""
        from lightning_medaug.data.batch import unpack_batch

        images, labels, _ = unpack_batch(batch)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(images.shape)}: set spatial_dims, in_channels and image_size to match the data"
            )
        if self.num_classes == 0:
            return images, None
        if labels is None:
            raise ValueError(f"{type(self).__name__} has num_classes={self.num_classes} and needs a 'label' in every "
                             "batch; use a data module with labels or set num_classes=0")
        return images, labels.to(images.device)

    # -- saving and loading --------------------------------------------------------------------
    def generator_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the registered name and the init arguments."""
        name = GENERATORS.name_of(self)
        if name is None:
            raise ValueError(f"{type(self).__name__} is not registered; decorate it with @register_generator(name)")
        from lightning_medaug import __version__

        # LightningCLI adds private keys such as ``_class_path`` to hparams; they are not init args.
        init_args = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        return {"generator": name, "init_args": init_args, "library_version": __version__}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the family and init args (:meth:`generator_config`) in the checkpoint, so a ``.ckpt``
        can be rebuilt and one of another family refused by name (a subclass overriding this calls super)."""
        if GENERATORS.name_of(self) is not None:  # an unregistered subclass still trains and checkpoints
            checkpoint[CHECKPOINT_KEY] = self.generator_config()

    def training_only_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the parts ``sample`` never uses (see :attr:`training_only_modules`)."""
        names = list(self.training_only_modules)
        if self.ema_pair is not None and getattr(self, self.ema_pair[1], None) is not None:
            names.append(self.ema_pair[0])
        return tuple(name + "." for name in names)

    def save_pretrained(self, path: str | Path, training_parts: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``.

        The weights are those ``sample`` uses; ``training_parts=True`` adds the training-only
        ones (:meth:`training_only_prefixes`), e.g. a discriminator to fine-tune with frozen
        layers (:class:`~lightning_medaug.finetune.FineTuneFrom`). To resume training, use a
        Lightning checkpoint.
        """
        config = self.generator_config()
        skipped = () if training_parts else self.training_only_prefixes()
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(skipped)}
        return write_weights_folder(path, config, state, metadata={"generator": config["generator"]})

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
        """Load a folder written by :meth:`save_pretrained` (see :func:`load_generator`)."""
        model = load_generator(path, map_location=map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class SharedStepModule(GenerativeModule):
    """A generator with one loss for training, validation and test (Lightning's shared-step
    pattern): subclasses implement :meth:`_shared_step`; GANs, whose steps differ, do not use it."""

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        """The loss of one batch, logged under ``stage`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")


def _detached(value: Tensor | float) -> Tensor | float:
    return value.detach() if isinstance(value, Tensor) else value


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModule:
    """Rebuild a generator from a ``save_pretrained`` folder; only registered classes are built."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: pass a folder written by save_pretrained()")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        name, init_args = config["generator"], config["init_args"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_file} is not a generator config ({err})") from err
    try:
        state = load_file(str(weights_file), device=str(map_location))
    except (SafetensorError, OSError) as err:  # a damaged or foreign file (e.g. a pickle renamed)
        raise ValueError(f"{weights_file} is not a readable safetensors file ({str(err).splitlines()[0][:120]}); "
                         "write it again with save_pretrained()") from None
    return build_generator(name, init_args, state, f"{weights_file} does not match a {name} built from {config_file}",
                           "write the folder again with save_pretrained()")


def build_generator(name: str, init_args: Mapping[str, Any], state: Mapping[str, Tensor], mismatch: str,
                    remedy: str) -> GenerativeModule:
    """The registered generator ``name`` built from ``init_args`` with the weights ``state``, in eval mode.

    ``state`` may lack the training-only parts (a lean export): they stay as initialised and are
    listed in ``untrained_parts``. Any other mismatch raises ``ValueError`` starting with
    ``mismatch`` (what does not match what) and, for a shape, ending with ``remedy``.
    """
    model = GENERATORS.get(name)(**init_args)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: name the first one, not all of them
        first = next((line.strip() for line in str(err).splitlines() if "mismatch" in line), str(err).splitlines()[0])
        raise ValueError(f"{mismatch} ({first}); {remedy}") from None
    training_only = model.training_only_prefixes()
    absent = [k for k in missing if k.startswith(training_only)]
    # Folders written before exports were lean hold training-only weights: ignored if no part takes them.
    missing = [k for k in missing if not k.startswith(training_only)]
    unexpected = [k for k in unexpected if not k.startswith(training_only)]
    if missing or unexpected:
        raise ValueError(f"{mismatch}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    model.untrained_parts = _start_training_parts(model, absent)
    return model.eval()


def _start_training_parts(model: GenerativeModule, absent: list[str]) -> frozenset[str]:
    """Without its saved weights, a live network an EMA averages starts from the average (training
    continues from the weights that sample); returns the keys left as initialised (discriminators)."""
    if absent and model.ema_pair is not None:
        live, ema = (getattr(model, name, None) for name in model.ema_pair)
        if ema is not None:
            live.load_state_dict(ema.module.state_dict())
            absent = [k for k in absent if not k.startswith(model.ema_pair[0] + ".")]
    return frozenset(absent)
