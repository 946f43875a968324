"""Label plans: which class every sample of a synthetic bank gets, fixed before any is drawn.

A plan maps each global sample index to a label, so any shard of a bank can be (re)generated on
its own and the bank's class counts are known up front. Classes are interleaved evenly through
the index range, so every shard (and any prefix of the bank) holds close to the plan's class mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LabelPlan", "label_plan", "parse_class_map", "largest_remainder"]

KINDS = ("balanced", "proportional", "explicit", "none")


@dataclass(frozen=True)
class LabelPlan:
    """Per-class sample counts plus how they were derived.

    Attributes:
        kind: ``"balanced"`` (round-robin over classes), ``"proportional"`` (counts follow
            ``proportions``), ``"explicit"`` (counts given by the user) or ``"none"``
            (unconditional generator: every label is -1).
        counts: samples per class, indexed by class (length ``num_classes``; empty for ``"none"``).
        proportions: the class shares a proportional plan was built from, else ``None``.
        num_unlabelled: sample count of a ``"none"`` plan.
    """

    kind: str
    counts: tuple[int, ...]
    proportions: tuple[float, ...] | None = None
    num_unlabelled: int = 0

    @property
    def num_samples(self) -> int:
        return int(sum(self.counts)) if self.kind != "none" else self.num_unlabelled

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def labels(self) -> np.ndarray:
        """int64 label of every global sample index (-1 everywhere for an unconditional plan)."""
        if self.kind == "none":
            return np.full(self.num_unlabelled, -1, dtype=np.int64)
        if self.kind == "balanced":
            return np.arange(self.num_samples, dtype=np.int64) % self.num_classes
        return _interleave(np.asarray(self.counts, dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "counts": list(self.counts),
                "proportions": None if self.proportions is None else list(self.proportions),
                "num_samples": self.num_samples}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelPlan:
        proportions = data.get("proportions")
        kind = data["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown label plan kind {kind!r}; expected one of {', '.join(KINDS)}")
        return cls(kind, tuple(int(c) for c in data["counts"]),
                   None if proportions is None else tuple(float(p) for p in proportions),
                   int(data["num_samples"]) if kind == "none" else 0)


def _interleave(counts: np.ndarray) -> np.ndarray:
    """Spread each class's samples evenly: class c's j-th sample sits at fraction (j + 1/2) / n_c."""
    classes = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    within = np.concatenate([np.arange(n, dtype=np.float64) for n in counts]) if len(counts) else np.zeros(0)
    keys = (within + 0.5) / np.repeat(np.maximum(counts, 1), counts)
    return classes[np.lexsort((classes, keys))]


def largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``shares * total`` (Hamilton's method)."""
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    order = np.lexsort((np.arange(len(shares)), -remainder))  # ties go to the lower class index
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def parse_class_map(text: str, what: str, cast: type = int) -> dict[int, Any]:
    """Read ``"0:1000,1:500"`` into ``{0: 1000, 1: 500}``; ValueError naming ``what`` otherwise."""
    result: dict[int, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition(":")
        try:
            if not sep:
                raise ValueError
            cls, number = int(key), cast(value)
        except ValueError:
            raise ValueError(f"cannot read {what} {text!r}: write class:value pairs like '0:1000,1:500'") from None
        if cls in result:
            raise ValueError(f"{what} {text!r} names class {cls} twice")
        result[cls] = number
    if not result:
        raise ValueError(f"{what} {text!r} is empty: write class:value pairs like '0:1000,1:500'")
    return result


def _dense(mapping: Mapping[int, Any], num_classes: int, what: str) -> np.ndarray:
    bad = sorted(int(c) for c in mapping if not 0 <= int(c) < num_classes)
    if bad:
        raise ValueError(f"{what} name classes {bad} but the generator has classes 0..{num_classes - 1}")
    dense = np.zeros(num_classes, dtype=np.float64)
    for cls, value in mapping.items():
        dense[int(cls)] = value
    if (dense < 0).any():
        raise ValueError(f"{what} must not be negative, got {dict(mapping)}")
    return dense


def label_plan(spec: str | Mapping[int, int] | LabelPlan | None, num_samples: int | None, num_classes: int,
               proportions: str | Mapping[int, float] | None = None) -> LabelPlan:
    """Build the label plan of a bank.

    Args:
        spec: ``"balanced"``, ``"proportional"`` (needs ``proportions``), explicit counts as a
            mapping or a ``"0:1000,1:500"`` string, a ready :class:`LabelPlan`, or ``None``
            (balanced for a class-conditional generator, no labels for an unconditional one).
        num_samples: bank size; may be ``None`` with explicit counts (their sum is used).
        num_classes: the generator's ``num_classes`` (0 = unconditional).
        proportions: class shares for ``"proportional"``, e.g. ``"0:0.26,1:0.74"`` (normalised).
    """
    if isinstance(spec, LabelPlan):
        plan = spec
    elif num_classes == 0:
        if spec is not None:
            raise ValueError(f"the generator is unconditional (num_classes=0): drop the label plan {spec!r}")
        plan = LabelPlan("none", (), None, _positive(num_samples))
    elif spec is None or spec == "balanced":
        plan = LabelPlan("balanced", tuple(int(c) for c in np.bincount(
            np.arange(_positive(num_samples)) % num_classes, minlength=num_classes)))
    elif spec == "proportional":
        if proportions is None:
            raise ValueError("labels='proportional' needs the class shares: pass proportions like '0:0.26,1:0.74'")
        shares = proportions if isinstance(proportions, Mapping) else parse_class_map(proportions, "proportions", float)
        dense = _dense(shares, num_classes, "proportions")
        if dense.sum() <= 0:
            raise ValueError(f"proportions must have a positive sum, got {dict(shares)}")
        counts = largest_remainder(dense, _positive(num_samples))
        plan = LabelPlan("proportional", tuple(int(c) for c in counts), tuple(float(p) for p in dense / dense.sum()))
    else:
        counts_map = spec if isinstance(spec, Mapping) else parse_class_map(str(spec), "label counts")
        if any(int(v) != v for v in counts_map.values()):
            raise ValueError(f"label counts must be whole numbers, got {dict(counts_map)}")
        counts = _dense(counts_map, num_classes, "label counts").astype(np.int64)
        plan = LabelPlan("explicit", tuple(int(c) for c in counts))
        if num_samples is not None and plan.num_samples != num_samples:
            raise ValueError(f"label counts {dict(counts_map)} add up to {plan.num_samples}, not num_samples="
                             f"{num_samples}: drop num_samples or make them agree")
    if proportions is not None and plan.kind != "proportional":
        raise ValueError("proportions only apply to labels='proportional'")
    if plan.num_samples < 1:
        raise ValueError("the label plan holds no sample: ask for at least one")
    if plan.kind != "none" and plan.num_classes != num_classes:
        raise ValueError(f"the label plan has {plan.num_classes} classes but the generator has {num_classes}")
    return plan


def _positive(num_samples: int | None) -> int:
    if num_samples is None or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer (it may be left out only with explicit label "
                         f"counts), got {num_samples!r}")
    return int(num_samples)
