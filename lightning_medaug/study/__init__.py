"""The utility study: a resumable grid of downstream runs, real vs augmented vs real + synthetic."""

from lightning_medaug.study.recipe import (
    find_recipe,
    load_recipe,
    run_recipe,
    with_classic_augmentation,
    with_mixing,
    with_subset,
    with_trainer,
)
from lightning_medaug.study.results import summarize, write_results
from lightning_medaug.study.runner import Cell, Study

__all__ = ["Cell", "Study", "find_recipe", "load_recipe", "run_recipe", "summarize", "with_classic_augmentation",
           "with_mixing", "with_subset", "with_trainer", "write_results"]
