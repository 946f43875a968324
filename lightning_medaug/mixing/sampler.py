"""Which samples a training epoch visits: every real one (or a share of them) plus synthetic ones.

:class:`MixSampler` indexes a ``ConcatDataset([real, synthetic])``: indices below ``num_real``
are real, the rest synthetic. The plan of an epoch depends only on ``(seed, epoch)``, so a resumed
run replays the same epochs, and each DDP rank takes a disjoint, equal share of it.
"""

from __future__ import annotations

import contextlib
import functools
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

__all__ = ["MixSampler", "synthetic_count", "balance_allocation", "ratio_at", "seeded_draw", "seeded_rngs",
           "curriculum"]

MODES = ("add", "replace", "swap")


def ratio_at(ratio: float, schedule: Mapping[int, float] | None, epoch: int) -> float:
    """The synthetic fraction in force at ``epoch``: the schedule's last entry at or before it."""
    if not schedule:
        return ratio
    starts = sorted(int(k) for k in schedule)
    current = ratio if epoch < starts[0] else schedule[max(s for s in starts if s <= epoch)]
    return float(current)


def synthetic_count(num_real: int, ratio: float, mode: str) -> tuple[int, int]:
    """``(real, synthetic)`` sample counts of an epoch with synthetic fraction ``ratio``.

    ``add`` keeps every real sample and adds ``ratio / (1 - ratio)`` times as many synthetic ones;
    ``replace`` keeps the epoch length and swaps a ``ratio`` share of real samples for synthetic;
    ``swap`` keeps the epoch's real plan and swaps each real sample for one of its own edits with
    probability ``ratio`` (how many is drawn per epoch, so none are counted here).
    """
    if mode == "add":
        if ratio >= 1.0:
            raise ValueError("ratio=1 in 'add' mode would need infinitely many synthetic samples; "
                             "use mode='replace' for synthetic-only training")
        return num_real, int(round(num_real * ratio / (1.0 - ratio)))
    if mode == "swap":
        return num_real, 0
    synthetic = int(round(num_real * ratio))
    return num_real - synthetic, synthetic


def balance_allocation(real_counts: Sequence[int], budget: int, available: Sequence[int]) -> np.ndarray:
    """Split ``budget`` synthetic samples over classes so real + synthetic counts end up as even as
    possible (water-filling). A class gets at most its ``available`` samples unless all pools
    together are too small, in which case the caps are lifted (samples then repeat)."""
    real = np.asarray(real_counts, dtype=np.int64)
    caps = np.asarray(available, dtype=np.int64)
    if budget <= 0:
        return np.zeros_like(real)
    if caps.sum() < budget:
        caps = np.where(caps > 0, budget, 0)
    if caps.sum() == 0:
        raise ValueError("no synthetic sample of any class is available")

    def filled(level: int) -> np.ndarray:
        return np.clip(level - real, 0, caps)

    lo, hi = 0, int(real.max()) + budget + 1  # smallest level whose fill reaches the budget
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if filled(mid).sum() < budget else (lo, mid)
    alloc = filled(lo - 1)
    short = budget - int(alloc.sum())
    # The last unit level is shared: classes at that level with room left get one more each.
    candidates = np.flatnonzero((real + alloc == lo - 1) & (alloc < caps))[:short]
    alloc[candidates] += 1
    return alloc


class MixSampler(DistributedSampler):
    """Epoch plans over ``ConcatDataset([real, synthetic])``, sharded across DDP ranks.

    A ``DistributedSampler`` subclass so that Lightning keeps it as is under DDP instead of wrapping
    it; it needs no process group: ``num_replicas`` and ``rank`` are given.

    Args:
        num_real: size of the real training set.
        synthetic_labels: label of each synthetic sample (its length is the synthetic pool size).
        ratio: synthetic fraction of every epoch, in [0, 1].
        mode: ``"add"`` or ``"replace"`` (see :func:`synthetic_count`).
        seed: seeds every epoch's plan together with the epoch number.
        real_labels: labels of the real samples, needed for ``class_balance``.
        class_balance: spend the synthetic budget on the classes that have fewest samples.
        ratio_schedule: ``{epoch: ratio}`` changes of the ratio from that epoch on (warm-up etc.).
        num_replicas, rank: the DDP world size and this process's rank.
        shuffle: shuffle the epoch (real and synthetic interleaved); off keeps real first.
        real_sampler: the user's own sampler of real indices (``WeightedRandomSampler``, a subset
            sampler, ...): its draws, not a permutation of all real samples, are the real share of an
            epoch, and the synthetic share comes on top of them (``add``) or replaces some (``replace``).
            It is drawn with a generator seeded by ``(seed, epoch)``, the same on every rank, so DDP
            shares stay disjoint.
        synthetic_parents: for ``mode="swap"``, the real index each synthetic sample was edited
            from (a bank of edits' ``parent_index``; -1 for none).
    """

    def __init__(self, num_real: int, synthetic_labels: Sequence[int] | np.ndarray, ratio: float = 0.5,
                 mode: str = "add", seed: int = 0, real_labels: Sequence[int] | np.ndarray | None = None,
                 class_balance: bool = False, ratio_schedule: Mapping[int, float] | None = None,
                 num_replicas: int = 1, rank: int = 0, shuffle: bool = True, real_sampler: Any = None,
                 synthetic_parents: Sequence[int] | np.ndarray | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for r in [ratio, *(ratio_schedule or {}).values()]:
            if not 0.0 <= float(r) <= 1.0:
                raise ValueError(f"ratio must lie in [0, 1], got {r}")
        if num_real < 1 and mode == "add":
            raise ValueError("the real training set is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside world size {num_replicas}")
        self.synthetic_labels = np.asarray(synthetic_labels, dtype=np.int64).reshape(-1)
        if class_balance:
            if real_labels is None:
                raise ValueError("class_balance needs the real samples' labels")
            self.real_labels = np.asarray(real_labels, dtype=np.int64).reshape(-1)
        else:
            self.real_labels = None
        self.num_real, self.ratio, self.mode, self.seed = num_real, float(ratio), mode, seed
        self.class_balance, self.ratio_schedule = class_balance, dict(ratio_schedule or {})
        self.num_replicas, self.rank, self.shuffle, self.epoch = num_replicas, rank, shuffle, 0
        self.real_sampler = real_sampler
        if mode == "swap":
            if synthetic_parents is None:
                raise ValueError("mode='swap' needs the real parent of each synthetic sample: a bank of edits "
                                 "written by `medaug generate --edit-from`")
            parents = np.asarray(synthetic_parents, dtype=np.int64).reshape(-1)
            self._edit_order = np.argsort(parents, kind="stable")
            self._edit_parents = parents[self._edit_order]
        self.drop_last = True  # shares are truncated, never padded: no sample twice in an epoch
        self._warned = False
        self._pools: list[np.ndarray] | None = None

    def counts(self, epoch: int | None = None) -> tuple[int, int]:
        """``(real, synthetic)`` counts of the whole epoch (all ranks together)."""
        epoch = self.epoch if epoch is None else epoch
        base = self.num_real if self.real_sampler is None else len(self.real_sampler)
        n_real, n_syn = synthetic_count(base, ratio_at(self.ratio, self.ratio_schedule, epoch), self.mode)
        if n_syn and self.synthetic_labels.size == 0:
            raise ValueError("the synthetic pool is empty but the ratio asks for synthetic samples")
        return n_real, n_syn

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """Every index the epoch visits, across all ranks, in order."""
        epoch = self.epoch if epoch is None else epoch
        n_real, n_syn = self.counts(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        if self.real_sampler is not None:
            real = seeded_draw(self.real_sampler, self.seed, epoch)[:n_real]
        else:
            real = rng.permutation(self.num_real)[:n_real] if self.shuffle else np.arange(n_real)
        if self.mode == "swap":
            return self._swap(real, ratio_at(self.ratio, self.ratio_schedule, epoch), rng)
        synthetic = self._synthetic(epoch, n_syn, real) + self.num_real
        order = np.concatenate([real, synthetic])
        return rng.permutation(order) if self.shuffle else order

    def _swap(self, real: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
        """Each real index replaced, with ``probability``, by one of its own edits (DA-Fusion,
        Trabucco et al. 2023); real samples without edits stay."""
        first = np.searchsorted(self._edit_parents, real, side="left")
        count = np.searchsorted(self._edit_parents, real, side="right") - first
        swap = (count > 0) & (rng.random(len(real)) < probability)
        pick = first + np.floor(rng.random(len(real)) * count).astype(np.int64)
        out = real.copy()
        out[swap] = self._edit_order[pick[swap]] + self.num_real
        return out

    def _synthetic(self, epoch: int, n_syn: int, real: np.ndarray) -> np.ndarray:
        if n_syn == 0:
            return np.zeros(0, dtype=np.int64)
        pool = self.synthetic_labels.size
        if n_syn > pool and not self._warned:
            warnings.warn(f"an epoch asks for {n_syn} synthetic samples but the bank holds {pool}: "
                          "some are repeated within the epoch; write a larger bank", stacklevel=2)
            self._warned = True
        if not self.class_balance:
            return _cycle(_permutation((self.seed, 0, 1), pool), epoch * n_syn, n_syn)
        classes = int(max(self.synthetic_labels.max(initial=0), self.real_labels.max(initial=0))) + 1
        real_counts = np.bincount(self.real_labels[real], minlength=classes)
        if self._pools is None or len(self._pools) != classes:  # the labels are fixed: group them once
            self._pools = [np.flatnonzero(self.synthetic_labels == c) for c in range(classes)]
        pools = self._pools
        alloc = balance_allocation(real_counts, n_syn, [len(p) for p in pools])
        picks = []
        for c, (members, k) in enumerate(zip(pools, alloc)):
            if k:
                perm = members[_permutation((self.seed, c, 2), len(members))]
                picks.append(_cycle(perm, epoch * int(k), int(k)))
        return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        per_rank = len(indices) // self.num_replicas
        return iter(indices[self.rank: per_rank * self.num_replicas: self.num_replicas].tolist())

    def __len__(self) -> int:
        return sum(self.counts()) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def synthetic_fraction(self, epoch: int | None = None) -> float:
        """Share of synthetic samples in the epoch (all ranks)."""
        n_real, n_syn = self.counts(epoch)
        return n_syn / max(1, n_real + n_syn)


def curriculum(preset: str, mode: str) -> dict[int, float]:
    """``"synthetic_then_real:N"``: synthetic only for N epochs, then real only (needs ``mode="replace"``)."""
    name, _, epochs = preset.partition(":")
    if name != "synthetic_then_real" or not epochs.isdigit() or int(epochs) < 1:
        raise ValueError(f"ratio_schedule preset must be 'synthetic_then_real:N' with N >= 1 epochs, got {preset!r}")
    if mode != "replace":
        raise ValueError("the synthetic_then_real curriculum needs mode='replace' (synthetic-only epochs first)")
    return {0: 1.0, int(epochs): 0.0}


@contextlib.contextmanager
def seeded_rngs(sampler: Any, key: int) -> Iterator[None]:
    """Inside: every generator a user's sampler may draw from is seeded by ``key``.

    A sampler's own ``generator`` attribute (torch's random, weighted and subset samplers) is
    swapped for a seeded one; torch's, NumPy's and Python's global generators are seeded inside a
    saved-and-restored state. Every DDP rank thus draws the same indices.
    """
    has_generator = hasattr(sampler, "generator")
    old = getattr(sampler, "generator", None)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            np.random.seed(key)
            random.seed(key)
            if has_generator:
                sampler.generator = torch.Generator().manual_seed(key)
            yield
    finally:
        if has_generator:
            sampler.generator = old
        np.random.set_state(np_state)
        random.setstate(py_state)


def seeded_draw(sampler: Iterable, seed: int, epoch: int) -> np.ndarray:
    """One pass of a user's sampler, seeded by ``(seed, epoch)`` whichever RNG it draws from
    (:func:`seeded_rngs`), so every DDP rank draws the same indices and takes its own share."""
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)
    with seeded_rngs(sampler, int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])):
        return np.fromiter((int(i) for i in iter(sampler)), dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _permutation(seed: tuple[int, ...], size: int) -> np.ndarray:
    """``default_rng(list(seed)).permutation(size)``, cached read-only: a pool's order is the same in
    every epoch and every loader, and shuffling a million-sample bank anew costs ~10 ms each time."""
    perm = np.random.default_rng(list(seed)).permutation(size)
    perm.flags.writeable = False
    return perm


def _cycle(perm: np.ndarray, start: int, count: int) -> np.ndarray:
    """``count`` items of ``perm`` from ``start``, wrapping around: successive epochs walk the pool."""
    return perm[(start + np.arange(count)) % len(perm)]

