"""``medaug demo``: the README's main job, generate -> bank -> mix -> compare, on the shipped PneumoniaMNIST.

A one-cell :class:`~lightning_medaug.study.Study` on a stratified 10% of the real training split
(the low-data setting the library is for):

1. train the class-conditional GAN of ``recipes/cgan_pneumonia.yaml`` on those images only, and
   write a synthetic bank from it (labels in the subset's class shares);
2. train the classifier of ``recipes/classify_pneumonia.yaml`` from the same seed on the real
   images only, and on real + synthetic images through ``SyntheticMixDataModule`` (and, with
   ``--classic``, with classic augmentation); select each checkpoint on validation AUC and test it
   on the official test split (real images only);
3. write ``report.html`` (self-contained) and ``report.md``, ``results.json``/``results.csv``, plots
   and real/synthetic sample grids.

Each training run leaves its folder (``recipe.yaml``, ``config.yaml``, ``metrics.json``,
``curves.png``), so every figure can be reproduced with ``medaug fit --config <folder>/recipe.yaml``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_medaug.study.recipe import find_recipe

__all__ = ["find_recipe", "main", "next_run_folder"]

GENERATOR_RECIPE = "cgan_pneumonia.yaml"
CLASSIFIER_RECIPE = "classify_pneumonia.yaml"
REPORTED = ("test/auc", "test/acc", "test/loss")


def next_run_folder(parent: Path) -> Path:
    """``parent/version_K`` with the first unused K, so a rerun never mixes with an earlier run."""
    k = 0
    while (parent / f"version_{k}").exists():
        k += 1
    return parent / f"version_{k}"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medaug demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="parent of the demo's run folder (default: runs/demo)")
    # Defaults sized for a few minutes on 2 CPU cores; `medaug study` runs the full protocol.
    parser.add_argument("--subset", type=float, default=0.1, help="stratified fraction of real train (default 0.1)")
    parser.add_argument("--generator-epochs", type=int, default=20, help="GAN epochs on the subset (default 20)")
    parser.add_argument("--epochs", type=int, default=10, help="classifier epochs in each arm (default 10)")
    parser.add_argument("--ratio", type=float, default=0.5, help="synthetic fraction of mixed training (default 0.5)")
    parser.add_argument("--classic", action="store_true", help="add a classic-augmentation arm")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, the models and the bank")
    args = parser.parse_args(list(argv))
    if not 0 < args.subset <= 1:
        raise ValueError(f"--subset must be in (0, 1], got {args.subset}")
    if not 0 < args.ratio < 1:
        raise ValueError(f"--ratio must be in (0, 1) for the mixed arm, got {args.ratio}")
    if args.generator_epochs < 1 or args.epochs < 1:
        raise ValueError("--generator-epochs and --epochs must be at least 1")
    return args


def main(argv: Sequence[str] = ()) -> int:
    """Run the demo; returns 0 on success (errors propagate to the CLI's one-line handler)."""
    from lightning_medaug.study import Study

    args = _parse(argv)
    run = next_run_folder(Path(args.out))
    study = Study(
        task=CLASSIFIER_RECIPE, out=str(run), metric="test/auc", fractions=[args.subset], seeds=[args.seed],
        epochs=args.epochs, classic_augmentation=args.classic, ratios=[args.ratio], synthetic_only=False,
        bank_factor=2.0,  # each synthetic image is drawn about twice over the epochs
        keep_checkpoints=True,  # two small runs: the user may want the trained classifiers
        generators={"cgan": {"recipe": GENERATOR_RECIPE, "epochs": args.generator_epochs,
                             # a few hundred images: the full DiffAugment policy (see the recipe's notes)
                             "overrides": {"model.init_args.diffaugment": "color,translation,cutout"}}},
    )
    results = study.run()

    console = Console()
    table = Table(title=f"test split, {args.subset:.0%} of the real training images (checkpoints selected on "
                        "validation; one seed: a demonstration, not evidence)")
    table.add_column("arm")
    for key in REPORTED:
        table.add_column(key, justify="right")
    for result in results:
        table.add_row(result["arm"], *(f"{result['test'].get(k, float('nan')):.4f}" for k in REPORTED))
    console.print(table)
    console.print(f"report: [bold]{run / 'report.html'}[/] (report.md, results.json, plots, sample grids; "
                  f"run folders in {run / 'cells'} and {run / 'generators'})")
    return 0
