"""A callback that leaves every run folder readable: ``metrics.json`` and ``curves.png``.

Lightning's loggers keep raw rows (``metrics.csv``, wandb); users asked for one small JSON with
the numbers that matter (per-epoch history, best validation score, test scores) and a picture of
the learning curves, written next to the resolved ``config.yaml``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["RunSummary"]


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = value
    return out


class RunSummary(L.Callback):
    """Write ``metrics.json`` and ``curves.png`` into the run folder (``trainer.log_dir``).

    Args:
        monitor: validation metric used to report the best epoch (e.g. ``"val/auc"``).
        mode: ``"max"`` or ``"min"`` for ``monitor``.
        dirpath: folder to write into; defaults to the trainer's log dir.
    """

    def __init__(self, monitor: str | None = None, mode: str = "max", dirpath: str | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.dirpath = monitor, mode, dirpath
        self.history: list[dict[str, float]] = []
        self.results: dict[str, dict[str, float]] = {}

    def folder(self, trainer: L.Trainer) -> Path:
        """The run folder this callback writes into."""
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs validation before this hook, so the row holds both train and val figures.
        row = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step)}
        row.update(_scalars(trainer.callback_metrics))
        self.history.append(row)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit = {"epochs": float(trainer.current_epoch), "global_step": float(trainer.global_step)}
        # the batch size trained with, which BatchSizeFinder may have changed from the recipe's
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if batch_size:
            fit["batch_size"] = float(batch_size)
        fit.update(_scalars(trainer.callback_metrics))
        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "")
        self.results["fit"] = fit
        self._write(trainer, best_checkpoint=Path(ckpt).name if ckpt else None)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results["test"] = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("test/")}
        self._write(trainer)

    def best(self) -> dict[str, float] | None:
        """The history row with the best ``monitor`` value, if any."""
        rows = [r for r in self.history if self.monitor and self.monitor in r]
        if not rows:
            return None
        pick = max if self.mode == "max" else min
        return pick(rows, key=lambda r: r[self.monitor])

    def _write(self, trainer: L.Trainer, **extra: Any) -> None:
        folder = self.folder(trainer)  # collective under DDP (log_dir broadcasts): every rank calls it
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "metrics.json"
        previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        summary = {**previous, **self.results, "history": self.history or previous.get("history", [])}
        if self.monitor:
            summary["monitor"] = {"metric": self.monitor, "mode": self.mode, "best": self.best()}
        summary.update({k: v for k, v in extra.items() if v is not None})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        if summary["history"]:
            from lightning_medaug.rendering.plots import plot_curves

            plot_curves(summary["history"], folder / "curves.png")
