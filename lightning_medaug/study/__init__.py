"""The utility study: a resumable grid of downstream runs, real vs augmented vs real + synthetic, and the
"beyond classic" study (synthetic arms on top of the best classic augmentation chosen on validation)."""

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
from lightning_medaug.study.v2 import BeyondClassicStudy

__all__ = ["BeyondClassicStudy", "Cell", "Study", "find_recipe", "load_recipe", "run_recipe", "summarize",
           "with_classic_augmentation", "with_mixing", "with_subset", "with_trainer", "write_results"]
