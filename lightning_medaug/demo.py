"""``medaug demo``: the README's main job, on the PneumoniaMNIST copy shipped with the package.

Trains the downstream classifier of ``recipes/classify_pneumonia.yaml`` on a stratified quarter of
the real training split (the low-data setting the library is for), tests the
best checkpoint (selected on validation AUC) on the official test split, and leaves a run folder
with ``config.yaml`` (the resolved recipe), ``metrics.json``, ``curves.png`` and the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["main", "find_recipe"]

DEFAULT_RECIPE = "classify_pneumonia.yaml"


def find_recipe(name: str) -> Path:
    """Resolve a recipe given as a path, or as a file name in ``./recipes`` or the source tree's ``recipes/``."""
    candidates = [Path(name), Path("recipes") / name, Path(__file__).resolve().parents[1] / "recipes" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"recipe {name!r} not found (looked in ./, ./recipes and the source tree's recipes/)")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medaug demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="parent folder of the run folder (default: runs/demo)")
    parser.add_argument("--config", default=DEFAULT_RECIPE, help="classification recipe to run")
    # Defaults sized for a laptop CPU in a few minutes: a quarter of train, six epochs. The
    # low-data setting is also where synthetic data is meant to help.
    parser.add_argument("--max-epochs", type=int, default=6, help="trainer.max_epochs (default 6; 0 keeps the recipe's)")
    parser.add_argument("--subset", type=float, default=0.25,
                        help="stratified fraction of train (default 0.25; 1 for all of it)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] = ()) -> int:
    """Run the demo; returns 0 on success (errors propagate to the CLI's one-line handler)."""
    from lightning_medaug.cli import MedaugCLI

    args = _parse(argv)
    recipe = find_recipe(args.config)
    out = Path(args.out)
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(out.parent), "name": out.name}}
    cli_args = ["--config", str(recipe), "--trainer.logger", json.dumps(logger)]
    if args.max_epochs:
        cli_args += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.subset is not None and args.subset < 1:
        cli_args += ["--data.init_args.subset", str(args.subset)]
    console = Console()
    console.rule(f"[bold]medaug demo[/] - {recipe.name}")
    cli = MedaugCLI(args=cli_args, run=False)
    cli._check()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = "best" if getattr(cli.trainer.checkpoint_callback, "best_model_path", "") else None
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)

    folder = Path(cli.trainer.log_dir)
    metrics = json.loads((folder / "metrics.json").read_text())
    table = Table(title="test split (checkpoint selected on validation)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.get("test", {}).items()):
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"run folder: [bold]{folder}[/] (config.yaml, metrics.json, curves.png, checkpoints/)")
    return 0
