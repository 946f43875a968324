"""The arms of a "beyond classic" study (:class:`~lightning_medaug.study.v2.BeyondClassicStudy`), read
from its ``arms`` mapping: what each arm trains with on top of the real subset.

Every entry names its augmentation (``none``, ``classic-best`` or one of
:data:`~lightning_medaug.study.recipe.AUGMENTATIONS`) and optionally a synthetic source and how it is
mixed:

* ``bank: {kind: samples, labels: proportional, bank_factor: f}``: the generator's samples drawn from
  noise, mixed by ``mixing: {mode: add, ratios: [...]}`` or by ``schedule: {synthetic_only_until: q,
  then: real}`` (synthetic only for the first ``q`` of the optimiser steps, then the real data);
* ``bank: {kind: edits, target_labels: same|other, strengths: [...], edits_per_image: k}``: diffusion
  edits of the real training images (DA-Fusion to the same class, Diff-Mix towards another), mixed by
  ``mixing: {mode: swap, swap_probability: p}`` or ``mixing: {mode: add, ratios: [...]}``.

Any entry with a bank may add ``selection: {min_confidence, min_novelty, keep_fraction, min_diversity,
per_class, folds, extractor, proxy}``: the bank is scored by proxy classifiers trained by k-fold on the cell's
real subset only (:func:`~lightning_medaug.selection.score_bank`, its scores stored in the bank) and
the arm mixes only the samples the :class:`~lightning_medaug.selection.KeepRule` keeps.

An entry expands into one :class:`Arm` per strength and ratio; every variant is reported, and the
report picks one per entry on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_medaug.study.recipe import AUGMENTATIONS

__all__ = ["CLASSIC_BEST", "Arm", "parse_arms"]

#: The augmentation of an arm that builds on the classic baseline chosen on validation per subset and seed.
CLASSIC_BEST = "classic-best"
_ENTRY_KEYS = ("augmentation", "bank", "mixing", "schedule", "labels", "selection")
_RULE_KEYS = ("min_confidence", "min_novelty", "keep_fraction", "min_diversity", "per_class")
_SELECTION_KEYS = (*_RULE_KEYS, "folds", "extractor", "proxy")
_BANK_KEYS = {"samples": ("kind", "labels", "bank_factor"),
              "edits": ("kind", "target_labels", "strengths", "edits_per_image", "soft_label")}


@dataclass(frozen=True)
class Arm:
    """One trained variant of an ``arms`` entry (``family``)."""

    name: str
    family: str
    augmentation: str
    bank: str | None = None          # None, "samples" or "edits"
    mode: str | None = None          # the mixing mode: "add", "swap" or "replace"
    ratio: float = 0.0               # synthetic share (add), swap probability (swap), 1 (replace)
    strength: float | None = None    # edit strength
    target_labels: str | None = None
    edits_per_image: int = 1
    bank_factor: float = 1.0
    synthetic_until: float | None = None  # curriculum: synthetic-only share of the steps
    selection: tuple[tuple[str, Any], ...] = ()  # the bank's KeepRule and scoring settings, sorted items

    @property
    def keep_rule(self) -> dict[str, Any]:
        """The :class:`~lightning_medaug.selection.KeepRule` arguments of ``selection``."""
        return {k: v for k, v in self.selection if k in _RULE_KEYS}

    @property
    def builds_on_classic_best(self) -> bool:
        return self.augmentation == CLASSIC_BEST


def _floats(value: Any, what: str, low: float, high: float) -> list[float]:
    values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
    if not values or any(not low < v <= high for v in values):
        raise ValueError(f"{what} must be values in ({low:g}, {high:g}], got {value!r}")
    return values


def _check_keys(given: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; use {', '.join(allowed)}")


def _parse_entry(family: str, entry: dict[str, Any]) -> list[Arm]:
    if not isinstance(entry, dict):
        raise ValueError(f"arm {family!r} must be a mapping with an 'augmentation', got {entry!r}")
    _check_keys(entry, _ENTRY_KEYS, f"arm {family!r}")
    augmentation = entry.get("augmentation", "none")
    if augmentation != CLASSIC_BEST and augmentation not in AUGMENTATIONS:
        raise ValueError(f"arm {family!r}: augmentation {augmentation!r} is not {CLASSIC_BEST!r} or one of "
                         f"{', '.join(AUGMENTATIONS)}")
    if entry.get("labels", "target") != "target":
        raise ValueError(f"arm {family!r}: labels must be 'target' (the class an edit was guided to); soft "
                         "labels do not reach the classifier through the mixer")
    bank, mixing, schedule = entry.get("bank"), entry.get("mixing"), entry.get("schedule")
    if bank is None:
        if mixing or schedule:
            raise ValueError(f"arm {family!r} mixes synthetic data but names no 'bank'")
        return [Arm(family, family, augmentation)]
    kind = bank.get("kind") if isinstance(bank, dict) else None
    if kind not in _BANK_KEYS:
        raise ValueError(f"arm {family!r}: bank.kind must be 'samples' or 'edits', got {kind!r}")
    _check_keys(bank, _BANK_KEYS[kind], f"arm {family!r} bank")
    if (mixing is None) == (schedule is None):
        raise ValueError(f"arm {family!r} needs exactly one of 'mixing' ({{mode, ratios}}) or 'schedule'")
    common: dict[str, Any] = {"family": family, "augmentation": augmentation, "bank": kind,
                              "selection": _selection(family, entry.get("selection"))}
    if kind == "samples":
        if bank.get("labels", "proportional") != "proportional":
            raise ValueError(f"arm {family!r}: a bank of samples is drawn with labels 'proportional' to the subset")
        common["bank_factor"] = _floats(bank.get("bank_factor", 1.0), f"arm {family!r} bank_factor", 0, 1e6)[0]
        strengths: list[float | None] = [None]
    else:
        target = bank.get("target_labels", "same")
        if target not in ("same", "other"):
            raise ValueError(f"arm {family!r}: target_labels must be 'same' or 'other', got {target!r}")
        per_image = bank.get("edits_per_image", 1)
        if not isinstance(per_image, int) or per_image < 1:
            raise ValueError(f"arm {family!r}: edits_per_image must be a positive integer, got {per_image!r}")
        common |= {"target_labels": target, "edits_per_image": per_image}
        strengths = list(_floats(bank.get("strengths", []), f"arm {family!r} strengths", 0, 1))
    if schedule is not None:
        _check_keys(schedule, ("synthetic_only_until", "then"), f"arm {family!r} schedule")
        if kind != "samples" or schedule.get("then", "real") != "real":
            raise ValueError(f"arm {family!r}: a schedule trains on samples first, then on the real data")
        until = _floats(schedule.get("synthetic_only_until"), f"arm {family!r} synthetic_only_until", 0, 1)[0]
        return [Arm(family, **common, mode="replace", ratio=1.0, synthetic_until=until)]
    mode = mixing.get("mode")
    if mode == "swap":
        _check_keys(mixing, ("mode", "swap_probability"), f"arm {family!r} mixing")
        if kind != "edits":
            raise ValueError(f"arm {family!r}: mode 'swap' swaps real images for their own edits: use a bank of edits")
        ratios = _floats(mixing.get("swap_probability"), f"arm {family!r} swap_probability", 0, 1)
    elif mode == "add":
        _check_keys(mixing, ("mode", "ratios"), f"arm {family!r} mixing")
        ratios = _floats(mixing.get("ratios", []), f"arm {family!r} ratios", 0, 1)
        if max(ratios) >= 1:
            raise ValueError(f"arm {family!r}: 'add' ratios must lie below 1, got {ratios}")
    else:
        raise ValueError(f"arm {family!r}: mixing.mode must be 'add' or 'swap', got {mode!r}")
    arms = []
    for strength in strengths:
        for ratio in ratios:
            name = family + (f"_s{strength:g}" if len(strengths) > 1 else "") + (
                f"_r{ratio:g}" if len(ratios) > 1 else "")
            arms.append(Arm(name, **common, mode=mode, ratio=ratio, strength=strength))
    return arms


def _selection(family: str, selection: Any) -> tuple[tuple[str, Any], ...]:
    if selection is None:
        return ()
    if not isinstance(selection, dict):
        raise ValueError(f"arm {family!r}: selection must be a mapping of {', '.join(_SELECTION_KEYS)}")
    _check_keys(selection, _SELECTION_KEYS, f"arm {family!r} selection")
    from lightning_medaug.selection import KeepRule

    KeepRule(**{k: v for k, v in selection.items() if k in _RULE_KEYS})  # refuse a bad rule now, not hours later
    return tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in selection.items()))


def parse_arms(arms: dict[str, dict[str, Any] | None]) -> list[Arm]:
    """Every variant of every entry, in the entries' order; ``ValueError`` on what cannot run."""
    if not arms:
        raise ValueError("arms must name at least one arm, e.g. {real: {augmentation: none}}")
    out = [arm for family, entry in arms.items() for arm in _parse_entry(family, entry or {})]
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names repeat: {names}; rename the entries")
    return out
