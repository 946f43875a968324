"""``MedaugCLI``: the LightningCLI that runs a recipe with the library's defaults and checks.

Behind ``medaug fit|validate|test|predict`` and behind every recipe a study or the demo runs
(:func:`~lightning_medaug.study.recipe.run_recipe`), so both train exactly alike: CSV logs under
``runs/``, rich progress bars, a :class:`~lightning_medaug.rendering.run_summary.RunSummary` in every
run, a data/model compatibility check and a checkpoint check before running, and a trained
generator exported as a ``save_pretrained`` folder. The ``medaug`` command itself
(:mod:`lightning_medaug.cli`) sits on top and only dispatches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.loggers import CSVLogger

from lightning_medaug.cli_errors import one_line
from lightning_medaug.registry import TASKS
from lightning_medaug.rendering.run_summary import RunSummary
from lightning_medaug.sizes import spatial_size

__all__ = ["MedaugCLI", "SaveAndLogConfig", "check_checkpoint", "check_data_model_compatible"]

#: attributes a data module and a model must agree on when both define them.
_SHARED_ATTRIBUTES = ("spatial_dims", "in_channels", "image_size")
#: ``--ckpt_path`` values that Lightning resolves to a file itself.
_CKPT_KEYWORDS = ("last", "best", "hpc")


def check_checkpoint(path: str | Path) -> None:
    """Refuse a checkpoint that is missing, unreadable, or would build objects when unpickled.

    Only the pickle's opcodes are read (``torch.serialization.get_unsafe_globals_in_checkpoint``),
    so a crafted file is refused before anything in it runs; Lightning then loads accepted files
    with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass a .ckpt file written by ModelCheckpoint")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint ({one_line(err)[:120]}); pass a .ckpt file "
                         "written by ModelCheckpoint") from None
    if unsafe:
        raise ValueError(f"{path} would build {', '.join(unsafe[:3])} when loaded, which plain weights never do: "
                         "medaug only loads checkpoints with torch.load(weights_only=True); if you trust its source, "
                         "load it in your own code and save its state_dict again")


def check_data_model_compatible(model: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
    """Raise ``ValueError`` when a recipe pairs a model with data of another shape or class count."""
    if datamodule is None:
        return
    hparams = getattr(model, "hparams", {})
    for name in _SHARED_ATTRIBUTES:
        data_value, model_value = getattr(datamodule, name, None), hparams.get(name)
        if name == "image_size" and not hasattr(model, "sample"):
            continue  # classifiers and segmenters accept any input size
        if name == "image_size" and data_value is not None and model_value is not None:
            # an int, a tuple and a recipe's list all name the same grid: compare them per axis
            dims = int(hparams.get("spatial_dims") or getattr(datamodule, "spatial_dims", None) or 2)
            data_value, model_value = _per_axis(data_value, dims), _per_axis(model_value, dims)
        if data_value is not None and model_value is not None and data_value != model_value:
            raise ValueError(
                f"model.{name}={model_value} but the data has {name}={data_value}: "
                f"set model.init_args.{name}: {data_value} in the recipe"
            )
    data_classes, model_classes = getattr(datamodule, "num_classes", None), hparams.get("num_classes")
    uses_labels = hasattr(model, "sample") or TASKS.name_of(model) == "classification"
    if uses_labels and data_classes and model_classes and model_classes != data_classes:
        raise ValueError(
            f"model.num_classes={model_classes} but the data has {data_classes} classes: "
            f"set model.init_args.num_classes: {data_classes} in the recipe"
        )


def _per_axis(size: Any, spatial_dims: int) -> Any:
    """``size`` as one int per axis, or as given when it is no valid size (the mismatch message shows it)."""
    try:
        return spatial_size(size, spatial_dims, min_side=1)
    except ValueError:
        return size


class SaveAndLogConfig(SaveConfigCallback):
    """Save the resolved config next to the run and hand it to every logger (wandb shows it).

    Lightning's own hyperparameter logging merges model and data hparams and fails when both name
    a value differently (``num_classes`` of a segmenter vs. its data), so the CLI turns that off and
    logs the one complete, resolved config instead.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        import yaml

        for logger in trainer.loggers:
            logger.log_hyperparams(yaml.safe_load(config))


class MedaugCLI(LightningCLI):
    """LightningCLI with the library's defaults: CSV logs under ``runs/``, rich progress bars,
    a :class:`RunSummary` in every run, and a data/model compatibility check before running."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        kwargs.setdefault("save_config_callback", SaveAndLogConfig)
        kwargs.setdefault("trainer_defaults", {
            "enable_autolog_hparams": False,
            "logger": lazy_instance(CSVLogger, save_dir="runs", name="medaug"),
            "callbacks": [lazy_instance(RichProgressBar)],
        })
        super().__init__(L.LightningModule, L.LightningDataModule, args=args, run=run, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Raise instead of printing the whole usage: ``main`` turns the error into one line.
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunSummary, "summary")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads the checkpoint's hyperparameters right after parsing: check the file first.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if isinstance(subcommand, str) else None
        if ckpt is not None and str(ckpt) not in _CKPT_KEYWORDS and "://" not in str(ckpt) \
                and not str(ckpt).startswith("registry"):
            check_checkpoint(ckpt)

    def before_instantiate_classes(self) -> None:
        # The default rich progress bar must yield to an explicit enable_progress_bar=false.
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("enable_progress_bar") is False:
            self.trainer_defaults = {k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        from lightning_medaug.generative.callbacks import RandomStateCheckpoint

        trainer = super().instantiate_trainer(**kwargs)
        # A resumed run continues the random stream of the uninterrupted one (bit-identical on CPU).
        if not any(isinstance(c, RandomStateCheckpoint) for c in trainer.callbacks):
            trainer.callbacks.append(RandomStateCheckpoint())
        return trainer

    def check(self) -> None:
        """Refuse a run before it writes anything: data and model that disagree (shape, class count), an
        unsafe checkpoint option, or a ``last`` checkpoint that would build objects when unpickled.
        Runs before every subcommand; call it yourself on a ``run=False`` CLI before fitting."""
        check_data_model_compatible(self.model, self.datamodule)
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init  # run=False: no subcommand
        if config.get("weights_only") is False:
            raise ValueError("--weights_only false is refused: medaug loads checkpoints with "
                             "torch.load(weights_only=True) only (a pickle can run code); drop the option")
        if "weights_only" in config:
            config["weights_only"] = True  # explicit, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off
        if config.get("ckpt_path") == "last":  # check what Lightning will pick, before the run writes anything
            for callback in self.trainer.checkpoint_callbacks:
                folder = getattr(callback, "dirpath", None)
                for path in sorted(Path(folder).glob("last*.ckpt")) if folder and Path(folder).is_dir() else []:
                    check_checkpoint(path)

    before_fit = before_validate = before_test = before_predict = check

    def after_fit(self) -> None:
        """Export a trained generator as a ``save_pretrained`` folder, ready for ``medaug generate``.

        With its training-only parts (a GAN's discriminator): the run's export is also the source
        that ``FineTuneFrom`` fine-tunes with frozen discriminator layers (docs/few_shot.md).
        """
        if not hasattr(self.model, "save_pretrained") or self.trainer.interrupted:
            return
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "generator"
        if self.trainer.is_global_zero:
            self.model.save_pretrained(folder, training_parts=True)
            print(f"generator saved to {folder} (medaug generate --model {folder} ...)")
