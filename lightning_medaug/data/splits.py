"""Deterministic subsets and hold-out splits shared by the real-data modules.

Both helpers are pure functions of their arguments and a seed, so a study's "10% of the training
data" or "images 3 and 7 held out" means the same samples on every machine and every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["check_subset", "stratified_subset", "holdout_split"]


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even; half-up is what people expect of "10% of 45".
    return int(math.floor(x + 0.5))


def check_subset(subset: float | int | None) -> float | int | None:
    """``subset`` validated: None, a fraction in (0, 1] or a count >= 1 (per class).

    A whole float above 1 (``32.0``, as a command line may parse ``32``) is read as the count.
    Raises ``ValueError`` otherwise.
    """
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, (int, float)):
        raise ValueError(f"subset must be None, a float in (0, 1] or an int >= 1, got {subset!r}")
    if isinstance(subset, float) and subset > 1 and subset.is_integer():
        subset = int(subset)
    if isinstance(subset, int) and subset < 1 or isinstance(subset, float) and not 0.0 < subset <= 1.0:
        raise ValueError(f"subset must be a float in (0, 1] or an int >= 1, got {subset!r}")
    return subset


def stratified_subset(labels: np.ndarray | Sequence[int], subset: float | int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified subset of ``labels``, sorted ascending.

    Args:
        labels: one integer class key per sample, shape (N,).
        subset: a float in (0, 1] keeps ``round(subset * n_c)`` samples of each class ``c``
            (at least one per class present); an int ``k >= 1`` keeps exactly ``k`` per class.
        seed: seed of the per-class permutations. The draws do not depend on ``subset``, so with
            one seed a smaller subset is always contained in a larger one (nested studies).

    Raises:
        ValueError: on a bad ``subset`` or when a class has fewer than ``k`` samples.
    """
    labels = np.asarray(labels).reshape(-1)
    if isinstance(subset, bool) or not isinstance(subset, (int, float, np.integer, np.floating)):
        raise ValueError(f"subset must be a float in (0, 1] or an int >= 1, got {subset!r}")
    per_class = isinstance(subset, (int, np.integer))
    if per_class and subset < 1:
        raise ValueError(f"subset as samples per class must be at least 1, got {subset}")
    if not per_class and not 0.0 < float(subset) <= 1.0:
        raise ValueError(f"subset as a fraction must be in (0, 1], got {subset}")
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = rng.permutation(members)
        if per_class:
            if len(members) < subset:
                raise ValueError(
                    f"class {cls} has only {len(members)} training samples, fewer than subset={subset} per class; "
                    "pass a smaller subset or a fraction"
                )
            count = int(subset)
        else:
            count = min(len(members), max(1, _round_half_up(float(subset) * len(members))))
        keep.append(order[:count])
    if not keep:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _validated_indices(indices: Sequence[int], n: int, name: str) -> list[int]:
    out: list[int] = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"{name} must hold integers, got {i!r}")
        if not -n <= int(i) < n:
            raise ValueError(f"{name} holds index {i}, outside the {n} samples found")
        out.append(int(i) % n)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} holds duplicate indices: {list(indices)}")
    return out


def holdout_split(
    n: int,
    val_indices: Sequence[int] | None = None,
    test_indices: Sequence[int] | None = None,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Split ``range(n)`` into strictly disjoint ``train``/``val``/``test`` index lists.

    Explicit ``*_indices`` win over fractions; a fraction ``f`` holds out ``round(f * n)`` samples
    (at least one when ``f > 0``) drawn with ``seed`` from those not already held out. Whatever is
    left is ``train``, which must not be empty.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    fixed = {
        "val": _validated_indices(val_indices, n, "val_indices") if val_indices is not None else None,
        "test": _validated_indices(test_indices, n, "test_indices") if test_indices is not None else None,
    }
    if fixed["val"] is not None and fixed["test"] is not None and set(fixed["val"]) & set(fixed["test"]):
        raise ValueError(f"val_indices and test_indices overlap at {sorted(set(fixed['val']) & set(fixed['test']))}")
    taken = set(fixed["val"] or []) | set(fixed["test"] or [])
    free = [i for i in np.random.default_rng(seed).permutation(n).tolist() if i not in taken]
    out: dict[str, list[int]] = {}
    for split, frac in (("test", test_fraction), ("val", val_fraction)):
        if fixed[split] is not None:
            out[split] = sorted(fixed[split])
            continue
        count = max(1, _round_half_up(frac * n)) if frac > 0 else 0
        out[split], free = sorted(free[:count]), free[count:]
    out["train"] = sorted(free)
    if not out["train"]:
        raise ValueError(
            f"no training samples left: {n} found, {len(out['val'])} held out for val and {len(out['test'])} for test; "
            "hold out fewer"
        )
    return {"train": out["train"], "val": out["val"], "test": out["test"]}
