"""A trained diffusion model as the frozen teacher of a distilled generator.

:func:`load_diffusion_teacher` reads a teacher from

* a folder written by ``save_pretrained`` (``medaug fit`` exports one to ``<run>/generator``), read
  with :func:`~.base.load_generator`;
* a Lightning ``.ckpt`` written by ``medaug fit`` (any LightningCLI run), read with
  ``torch.load(weights_only=True)``: the checkpoint's ``_class_path`` hyperparameter names the
  family, which must be a registered generator;
* the teacher's ``config.json`` content alone (``config=``), for a distilled model rebuilt from its
  own folder or checkpoint, whose state dict then brings the weights.

Zips, URLs and named weights are resolved by :func:`lightning_medaug.hub.resolve_pretrained`,
which sits above the generative families: pass the folder it returns.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_medaug.generative.base import CONFIG_NAME, GenerativeModule, load_generator
from lightning_medaug.generative.diffusion import DiffusionGenerator
from lightning_medaug.registry import GENERATORS

__all__ = ["load_diffusion_teacher"]


def load_diffusion_teacher(path: str | Path | None = None,
                           config: Mapping[str, Any] | None = None) -> tuple[DiffusionGenerator, dict[str, Any]]:
    """The teacher (frozen, in eval mode) and its ``config.json`` content; ``config`` wins over ``path``.

    Raises ``ValueError`` for a teacher of a family that is not a diffusion model, and
    ``FileNotFoundError`` for a path that is neither a folder nor a ``.ckpt`` file.
    """
    # A fresh context: under LightningCLI a context variable holds the hyperparameters given to the
    # distilled model, and the teacher's own save_hyperparameters() would otherwise record them.
    teacher = contextvars.Context().run(_build, path, config)
    if not isinstance(teacher, DiffusionGenerator):
        name = GENERATORS.name_of(teacher) or type(teacher).__name__
        diffusion = [n for n in GENERATORS.list() if issubclass(GENERATORS.get(n), DiffusionGenerator)]
        raise ValueError(f"the teacher is a {name!r} generator, not a diffusion model: distil a "
                         f"{' or '.join(map(repr, diffusion))} model trained with this library")
    return teacher.requires_grad_(False).eval(), teacher.generator_config()


def _build(path: str | Path | None, config: Mapping[str, Any] | None) -> GenerativeModule:
    if config is not None:
        if not isinstance(config, Mapping) or "generator" not in config or "init_args" not in config:
            raise ValueError("teacher_config must be the content of a teacher's config.json "
                             "({'generator': ..., 'init_args': {...}}); pass teacher instead")
        return GENERATORS.get(config["generator"])(**config["init_args"])
    if path is None:
        raise ValueError("distillation needs a teacher: set teacher (model.init_args.teacher in a recipe) to the "
                         "folder of a trained 'ddpm' written by save_pretrained() (`medaug fit` exports it to "
                         "<run folder>/generator) or to a .ckpt of its run")
    path = Path(path).expanduser()
    if path.is_dir():
        return load_generator(path)
    if path.is_file() and path.suffix == ".ckpt":
        return _from_checkpoint(path)
    if path.is_file() and path.suffix == ".zip":
        raise ValueError(f"{path} is a zip: pass the folder lightning_medaug.hub.resolve_pretrained({str(path)!r}) "
                         "extracts it to")
    raise FileNotFoundError(f"teacher {path} not found: pass a folder written by save_pretrained() (with "
                            f"{CONFIG_NAME}) or a .ckpt file written by `medaug fit`")


def _from_checkpoint(path: Path) -> GenerativeModule:
    """A generator rebuilt from a LightningCLI checkpoint: its hyperparameters, then its state dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams, state = dict(checkpoint["hyper_parameters"]), checkpoint["state_dict"]
    except (RuntimeError, ValueError, OSError, EOFError, KeyError, TypeError) as err:
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ValueError(f"{path} is not a readable Lightning checkpoint of a generator ({first})") from None
    class_path = hparams.get("_class_path")
    by_path = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in map(GENERATORS.get, GENERATORS.list())}
    if class_path not in by_path:
        raise ValueError(f"{path} does not say which registered generator it holds (class path {class_path!r}; "
                         "only checkpoints of `medaug fit` do): export the teacher with save_pretrained() and pass "
                         "that folder")
    model = by_path[class_path](**{k: v for k, v in hparams.items() if not k.startswith("_")})
    model.load_state_dict(state)
    return model
