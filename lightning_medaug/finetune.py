"""Few-shot fine-tuning: start a generator from pretrained weights and freeze some of its layers.

Transfer from a generator trained on a larger set is the standard remedy when only tens of
images are available (Wang et al., "Transferring GANs", ECCV 2018); freezing the discriminator's
first layers ("FreezeD", Mo et al., CVPR-W 2020) keeps its generic low-level features and
stabilises training on few images. :class:`FineTuneFrom` does both for any registered family::

    trainer = L.Trainer(callbacks=[FineTuneFrom("runs/cgan_organamnist/version_0/generator",
                                                freeze=["discriminator.features.0.*"])])

The source is a ``save_pretrained`` folder, its zip, a URL or a named weight
(:func:`~lightning_medaug.hub.load_pretrained`), or the Lightning checkpoint (``.ckpt``) of a run
(:func:`~lightning_medaug.hub.load_generator_checkpoint`); the same checks apply to all of them.

Lightning's documented hook order decides where each part happens: ``setup`` runs
before ``configure_optimizers`` (so frozen parameters are frozen before any optimiser, automatic
or manual, is built), but the trainer learns whether the run resumes from a checkpoint only
after ``setup``. So the freeze is applied in ``setup('fit')``, and the weights are copied in
``on_fit_start``, only when ``trainer.ckpt_path`` is ``None``: a resumed run keeps its
checkpoint's weights and never fetches the source again. ``on_fit_start`` comes after the model
is moved to its device and wrapped (DDP broadcasts no weights after that, so every rank loads
the same file); sharded strategies (FSDP, DeepSpeed) are not supported.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_medaug.generative.base import GenerativeModule
from lightning_medaug.hub import load_generator_checkpoint, load_pretrained
from lightning_medaug.registry import GENERATORS

__all__ = ["FineTuneFrom", "freeze_parameters", "transfer_weights"]

def freeze_parameters(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose names match any glob pattern; returns their names.

    Only parameters are frozen: buffers (batch-norm running statistics, spectral-norm vectors)
    still update in ``forward`` during training. A pattern that matches nothing raises
    ``ValueError`` (a typo would otherwise silently fine-tune everything).
    """
    names = [name for name, _ in module.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            prefixes = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ValueError(f"freeze pattern {pattern!r} matches no parameter of {type(module).__name__}; "
                             f"names look like {', '.join(p + '.*' for p in prefixes[:8])}")
    frozen = []
    for name, param in module.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def _label_embedding_keys(module: nn.Module) -> set[str]:
    """State-dict keys of the ``nn.Embedding`` modules (label embeddings and their spectral norms)."""
    prefixes = [name + "." for name, m in module.named_modules() if isinstance(m, nn.Embedding)]
    return {key for key in module.state_dict() if any(key.startswith(p) for p in prefixes)}


def _differing_args(source: GenerativeModule, target: GenerativeModule) -> str:
    a, b = dict(source.hparams), dict(target.hparams)
    diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
            if not k.startswith("_") and a.get(k) != b.get(k)]
    return "; ".join(diff[:4]) or "none"


def transfer_weights(source: GenerativeModule, target: GenerativeModule, strict_shapes: bool = True,
                     where: str = "the source") -> list[str]:
    """Copy ``source``'s weights into ``target`` (same registered family); returns the keys left as initialised.

    Label embeddings may differ in shape when ``num_classes`` differs, and a lean export holds no
    training-only parts (``source.untrained_parts``, e.g. a discriminator): both keep ``target``'s
    fresh initialisation. Any other shape mismatch raises ``ValueError`` naming the first one,
    unless ``strict_shapes=False``, which skips it too.
    """
    source_name, target_name = GENERATORS.name_of(source), GENERATORS.name_of(target)
    if target_name is None:
        raise ValueError(f"{type(target).__name__} is not a registered generator: FineTuneFrom fine-tunes "
                         "generators registered with @register_generator")
    if source_name != target_name:
        raise ValueError(f"{where} holds a {source_name!r} generator but the model being trained is a "
                         f"{target_name!r}: a {type(target).__name__} cannot start from a {type(source).__name__}; "
                         "fine-tune a model of the same family (model.class_path)")
    src, dst = source.state_dict(), target.state_dict()
    absent = [k for k in dst if k not in src] + [k for k in src if k not in dst]
    if absent:
        raise ValueError(f"{where} does not fit the model being trained: {absent[0]!r} exists in only one of them "
                         f"(init args that differ: {_differing_args(source, target)}); match them in the recipe")
    relabelled = source.num_classes != target.num_classes
    embeddings = _label_embedding_keys(target) if relabelled else set()
    kept: dict[str, Tensor] = {}
    skipped: list[str] = []
    untrained = getattr(source, "untrained_parts", frozenset())
    for key, value in dst.items():
        if key in untrained:
            skipped.append(key)
        elif src[key].shape == value.shape:
            kept[key] = src[key]
        elif key in embeddings or not strict_shapes:
            skipped.append(key)
        else:
            raise ValueError(
                f"{where} does not fit the model being trained: {key} has shape {tuple(src[key].shape)} there and "
                f"{tuple(value.shape)} here (init args that differ: {_differing_args(source, target)}); match them "
                "in the recipe, or pass strict_shapes=False to keep the mismatched tensors as initialised"
            )
    target.load_state_dict(kept, strict=False)
    return skipped


class FineTuneFrom(L.Callback):
    """Start training from a pretrained generator of the same family, with some layers frozen.

    Args:
        source: anything :func:`~lightning_medaug.hub.load_pretrained` accepts (a
            ``save_pretrained`` folder, its ``.zip``, a URL of the zip or a named weight), or a
            Lightning checkpoint (``.ckpt``) of a generator of the same family, read on the CPU
            with ``torch.load(weights_only=True)``.
        freeze: glob patterns of parameter names to freeze, e.g. ``"generator.blocks.0.*"`` or
            ``"discriminator.features.0.*"``; applied in ``setup('fit')``, also on resume.
        strict_shapes: raise on any shape mismatch other than the label embeddings (when
            ``num_classes`` differs); ``False`` keeps every mismatched tensor as initialised.
        sha256: expected SHA-256 of the source zip or ``.ckpt`` file.
        cache_dir: cache of downloads (see :func:`~lightning_medaug.hub.load_pretrained`).
    """

    def __init__(self, source: str, freeze: Sequence[str] = (), strict_shapes: bool = True,
                 sha256: str | None = None, cache_dir: str | None = None):
        if not str(source).strip():
            raise ValueError("source is empty: pass a save_pretrained folder, a .zip, a URL, a named weight or a "
                             ".ckpt checkpoint")
        if isinstance(freeze, str):
            raise ValueError(f"freeze must be a list of glob patterns, got the string {freeze!r}: write [{freeze!r}]")
        self.source = str(source)
        self.freeze = tuple(freeze)
        self.strict_shapes = strict_shapes
        self.sha256 = sha256
        self.cache_dir = cache_dir
        self.frozen: list[str] = []
        self.reinitialised: list[str] = []
        self.loaded = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, GenerativeModule):
            raise ValueError(f"FineTuneFrom fine-tunes generators; {type(pl_module).__name__} is not one")
        # Before configure_optimizers: manual optimisers (GANs) are built from these parameters too.
        self.frozen = freeze_parameters(pl_module, self.freeze)
        if self.frozen:  # Lightning's own logger: shown by `medaug fit` at INFO level
            rank_zero_info(f"FineTuneFrom: froze {len(self.frozen)} parameter tensors matching {list(self.freeze)}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resuming: the checkpoint's weights win and the source is not read. A second fit() with the
        # same callback continues from the weights in memory.
        if trainer.ckpt_path is not None or self.loaded:
            return
        source = self._load_source()
        with torch.no_grad():
            self.reinitialised = transfer_weights(source, pl_module, self.strict_shapes,
                                                  where=f"the source {_short(self.source)}")
        self.loaded = True
        unsaved = sorted(set(self.frozen) & source.untrained_parts)
        if unsaved:
            raise ValueError(f"FineTuneFrom would freeze {unsaved[0]} at a fresh initialisation: the source "
                             f"{_short(self.source)} is an inference export without its training-only parts; "
                             "save it with save_pretrained(path, training_parts=True), or freeze other layers")
        rank_zero_info(f"FineTuneFrom: loaded {_short(self.source)} into {type(pl_module).__name__}")
        if self.reinitialised:
            why = ("no training-only parts in the source" if source.untrained_parts else
                   f"num_classes {source.num_classes} -> {pl_module.num_classes}"  # type: ignore[attr-defined]
                   if source.num_classes != pl_module.num_classes else "strict_shapes=False")  # type: ignore
            rank_zero_info(f"FineTuneFrom: re-initialised {len(self.reinitialised)} tensors ({why}): "
                           + ", ".join(self.reinitialised[:6]) + (" ..." if len(self.reinitialised) > 6 else ""))

    def _load_source(self) -> GenerativeModule:
        if Path(self.source).suffix == ".ckpt" and "://" not in self.source:
            return load_generator_checkpoint(self.source, sha256=self.sha256)
        return load_pretrained(self.source, sha256=self.sha256, cache_dir=self.cache_dir, map_location="cpu")

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source, "freeze": list(self.freeze), "loaded": self.loaded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = bool(state_dict.get("loaded", False))


def _short(source: str) -> str:
    return source if "://" in source or len(source) < 80 else f".../{Path(source).name}"
