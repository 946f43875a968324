"""Choosing on validation: the classic baseline per subset and seed, and one variant per arm family.

The test split never takes part: every choice here reads the validation score that selected each
run's checkpoint (``result["selection"]``), so the choice could be made before any test figure exists.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["choose_classic", "choose_variant", "validation_score"]


def validation_score(result: dict[str, Any]) -> float:
    """The validation score that selected the run's checkpoint, oriented so that larger is better."""
    selection = result.get("selection")
    if not selection or selection.get("value") is None:
        raise ValueError(f"cell {result.get('cell')!r} recorded no validation score: its recipe must monitor a "
                         "validation metric (ModelCheckpoint monitor) for a choice on validation")
    value = float(selection["value"])
    return -value if selection.get("mode") == "min" else value


def choose_classic(candidates: Sequence[str], results: dict[str, dict[str, Any]], decimals: int = 3) -> str:
    """The candidate with the highest validation score among ``results`` (``{candidate: result}``, one
    subset and seed); scores equal to ``decimals`` places go to the earlier name in ``candidates``."""
    missing = [c for c in candidates if c not in results]
    if missing:
        raise ValueError(f"classic-best needs every candidate's run; missing {missing}")
    scores = {c: round(validation_score(results[c]), decimals) for c in candidates}
    best = max(scores.values())
    return next(c for c in candidates if scores[c] == best)


def choose_variant(variants: dict[str, Sequence[dict[str, Any]]]) -> str | None:
    """The variant (e.g. one edit strength) with the best mean validation score over its seeds, among the
    variants finished on the most seeds; ``None`` when none has finished."""
    finished = {name: cells for name, cells in variants.items() if cells}
    if not finished:
        return None
    most = max(len(cells) for cells in finished.values())
    return max((name for name, cells in finished.items() if len(cells) == most),
               key=lambda name: statistics.fmean(validation_score(c) for c in finished[name]))
