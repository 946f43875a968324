"""``medaug demo``: the README's main job, generate -> bank -> mix -> compare, on the shipped PneumoniaMNIST.

A one-cell :class:`~lightning_medaug.study.Study` on a stratified 10% of the real training split
(the low-data setting the library is for):

1. train the class-conditional GAN of ``recipes/cgan_pneumonia.yaml`` on those images only, and
   write a synthetic bank from it (labels in the subset's class shares);
2. train the classifier of ``recipes/classify_pneumonia.yaml`` from the same seed in four arms: real
   images only, with classic augmentation, real + synthetic through ``SyntheticMixDataModule``, and
   classic augmentation of real + synthetic (``--no-classic`` drops the two classic arms). Every arm
   gets the same number of optimiser steps (``--steps``) and is validated at the same steps: an
   ``add``-mode mixed epoch is longer, so equal epochs would give the mixed arms more training. Each
   checkpoint is selected on validation AUC and tested on the official test split (real images only);
3. write ``report.html`` (self-contained) and ``report.md``, ``results.json``/``results.csv``, plots
   and real/synthetic sample grids; the table and the report show, beside each arm, what the
   committed multi-seed study (``benchmarks/results/study_pneumonia/``) found at the same fraction.

Each training run leaves its folder (``recipe.yaml``, ``config.yaml``, ``metrics.json``,
``curves.png``), so every figure can be reproduced with ``medaug fit --config <folder>/recipe.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, ArgumentParser, Namespace
from rich.console import Console
from rich.table import Table

from lightning_medaug.command_parser import command_parser, parse_command
from lightning_medaug.demo_reference import CAVEAT, describe, reference_arm, reference_section
from lightning_medaug.study.recipe import find_recipe

__all__ = ["build_parser", "find_recipe", "main", "next_run_folder", "step_budget"]

GENERATOR_RECIPE = "cgan_pneumonia.yaml"
CLASSIFIER_RECIPE = "classify_pneumonia.yaml"
REPORTED = ("test/auc", "test/acc", "test/loss")
#: validations per run, at the same steps in every arm
VALIDATIONS = 10


def next_run_folder(parent: Path) -> Path:
    """``parent/version_K`` with the first unused K, so a rerun never mixes with an earlier run."""
    k = 0
    while (parent / f"version_{k}").exists():
        k += 1
    return parent / f"version_{k}"


def step_budget(steps: int) -> dict[str, Any]:
    """Trainer overrides giving every arm ``steps`` optimiser steps, validated every ``steps / 10``
    steps whatever its epoch length (an ``add``-mode mixed epoch has more batches than a real one)."""
    return {"trainer.max_epochs": -1, "trainer.max_steps": steps, "trainer.check_val_every_n_epoch": None,
            "trainer.val_check_interval": max(1, steps // VALIDATIONS)}


def build_parser() -> ArgumentParser:
    parser = command_parser("medaug demo", __doc__.splitlines()[0])
    parser.add_argument("--out", type=str, default="runs/demo", help="parent of the demo's run folder")
    # Defaults sized for about five minutes on 2 CPU cores; `medaug study` runs the full protocol.
    parser.add_argument("--subset", type=float, default=0.1, help="stratified fraction of real train")
    parser.add_argument("--generator-epochs", type=int, default=20, help="GAN epochs on the subset")
    parser.add_argument("--steps", type=int, default=120, help="optimiser steps of the classifier in every arm")
    parser.add_argument("--ratio", type=float, default=0.5, help="synthetic fraction of mixed training")
    parser.add_argument("--classic", action=ActionYesNo(no_prefix="no-"), default=True,
                        help="the classic-augmentation arms, alone and with synthetic images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, the models and the bank")
    return parser


def _parse(argv: Sequence[str]) -> Namespace:
    args = parse_command(build_parser(), argv)
    if not 0 < args.subset <= 1:
        raise ValueError(f"--subset must be in (0, 1], got {args.subset}")
    if not 0 < args.ratio < 1:
        raise ValueError(f"--ratio must be in (0, 1) for the mixed arm, got {args.ratio}")
    if args.generator_epochs < 1 or args.steps < 1:
        raise ValueError("--generator-epochs and --steps must be at least 1")
    return args


def main(argv: Sequence[str] = ()) -> int:
    """Run the demo; returns 0 on success (errors propagate to the CLI's one-line handler)."""
    from lightning_medaug.study import Study, write_results

    args = _parse(argv)
    run = next_run_folder(Path(args.out))
    study = Study(
        task=CLASSIFIER_RECIPE, out=str(run), metric="test/auc", fractions=[args.subset], seeds=[args.seed],
        classic_augmentation=args.classic, ratios=[args.ratio], synthetic_only=False,
        classic_with_synthetic=[args.ratio] if args.classic else False, overrides=step_budget(args.steps),
        bank_factor=2.0,  # twice one epoch's synthetic share: more distinct images than the study's bank (1x)
        keep_checkpoints=True,  # a few small runs: the user may want the trained classifiers
        generators={"cgan": {"recipe": GENERATOR_RECIPE, "epochs": args.generator_epochs,
                             # a few hundred images: the full DiffAugment policy (see the recipe's notes)
                             "overrides": {"model.init_args.diffaugment": "color,translation,cutout"}}},
    )
    results = study.run()
    write_results(study, results, preface=[reference_section(results, args.steps)])

    console = Console()
    table = Table(title=f"test split, {args.subset:.0%} of the real training images (checkpoints selected on "
                        f"validation; one seed, {args.steps} optimiser steps per arm)")
    table.add_column("arm", min_width=max(len(r["arm"]) for r in results))  # arm names are never cut
    for key in REPORTED:
        table.add_column(key, justify="right")
    table.add_column("steps", justify="right")
    table.add_column("study test/auc (converged)", justify="right")
    for result in results:
        metrics = run / "cells" / result["cell"] / "run" / "metrics.json"
        fit = json.loads(metrics.read_text(encoding="utf-8")).get("fit", {})
        table.add_row(result["arm"], *(f"{result['test'].get(k, float('nan')):.4f}" for k in REPORTED),
                      f"{fit.get('global_step', float('nan')):.0f}",
                      describe(reference_arm(result["fraction"], result["arm"])))
    console.print(table)
    console.print(CAVEAT)
    console.print(f"report: [bold]{run / 'report.html'}[/] (report.md, results.json, plots, sample grids; "
                  f"run folders in {run / 'cells'} and {run / 'generators'})")
    return 0

