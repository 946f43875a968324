"""``medaug score``: keep the bank samples that add to the real data.

Every sample of a synthetic bank is scored by proxy classifiers trained by k-fold on the real
training set only (:mod:`~.proxies`) and by its distance to the nearest training image; a
:class:`KeepRule` keeps them by confidence, novelty and diversity (:mod:`~.rule`), and
:func:`score_bank` stores the scores and the rule in the bank (:mod:`~.score`), so
``SyntheticBank(bank, min_score=1)`` reads the chosen set reproducibly.
"""

from lightning_medaug.selection.proxies import ProxyConfig, stratified_folds
from lightning_medaug.selection.rule import KeepRule
from lightning_medaug.selection.score import SCORE_COLUMNS, SELECTION_FILE, score_bank

__all__ = ["KeepRule", "ProxyConfig", "SCORE_COLUMNS", "SELECTION_FILE", "score_bank", "stratified_folds"]
