"""Model cards of shared generators: :mod:`~lightning_medaug.model_card.card` writes them,
``medaug card`` (:mod:`~lightning_medaug.model_card.command`) does so from a run folder."""

from lightning_medaug.model_card.card import (
    DEFAULT_INTENDED_USE,
    read_evaluation,
    training_environment,
    write_model_card,
)
from lightning_medaug.model_card.command import main as card_main

__all__ = ["DEFAULT_INTENDED_USE", "card_main", "read_evaluation", "training_environment", "write_model_card"]
