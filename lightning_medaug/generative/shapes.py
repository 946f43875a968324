"""Network grids of generators: the data's size padded inside to what a network takes.

Real images are rarely square and real volumes rarely cubic, while the networks halve (or double)
every axis a fixed number of times. Every family therefore goes through these helpers, once
(``image_size`` itself is normalised by :func:`lightning_medaug.sizes.spatial_size`):

* :func:`padded_size` / :func:`resampling_count` say which grid a network runs on;
* :func:`pad_to` pads images to that grid (edge replication, centred, so the border looks like
  the data to the convolutions) and :func:`crop_to` cuts the same border off again, so samples
  have exactly the data's shape and losses cover the real image only;
* :func:`random_patches` cuts one random patch from each sample (patch-based training);
* :func:`space_to_depth` folds a fine grid onto a coarse one without losing a value (a mask onto
  a latent grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_medaug.sizes import MIN_SIDE, format_size

__all__ = ["crop_to", "pad_to", "padded_size", "resampling_count", "resampling_grid", "resolution_ladder",
           "random_patches", "space_to_depth"]


def padded_size(size: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Every side of ``size`` rounded up to a multiple of ``multiple`` (28 -> 32 for 8)."""
    return tuple(-(-s // multiple) * multiple for s in size)


def resampling_count(size: Sequence[int], requested: int | None = None, min_size: int = MIN_SIDE) -> int:
    """Number of x2 up/down-samplings between ``size`` and a network's coarsest grid.

    With ``requested=None``: the most that halve every side exactly while leaving at least
    ``min_size`` (28 -> 7 after 2, 32 -> 4 after 3, (24, 20) -> (6, 5) after 2); when a side is odd
    there is no such count, and the most that leave ``min_size`` on the smallest side are used, the
    sides then padded to a multiple (:func:`padded_size`). Raises ``ValueError`` for sizes too small
    for one resampling, or a ``requested`` count deeper than the smallest side.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"the number of x2 resamplings must be at least 1, got {requested}")
        if min(size) < 2**requested:
            raise ValueError(f"image_size={format_size(tuple(size))} is not reachable with {requested} x2 "
                             f"resamplings: every side must be at least {2**requested}; use fewer")
        return requested
    exact = min(_halvings(s, min_size) for s in size)
    if exact >= 1:
        return exact
    count = int(math.floor(math.log2(min(size) / min_size))) if min(size) >= 2 * min_size else 0
    if count < 1:
        raise ValueError(f"image_size={format_size(tuple(size))} is too small for x2 resampling from a grid of at "
                         f"least {min_size}: use at least {2 * min_size} on every axis")
    return count


def resampling_grid(size: Sequence[int], requested: int | None = None,
                    min_size: int = MIN_SIDE) -> tuple[int, tuple[int, ...]]:
    """``(count, grid)``: :func:`resampling_count` and ``size`` padded to multiples of ``2**count``."""
    count = resampling_count(size, requested, min_size)
    return count, padded_size(size, 2**count)


def resolution_ladder(size: Sequence[int], requested: int | None = None) -> list[tuple[int, ...]]:
    """The grids of a network that doubles ``size``'s coarsest grid up to ``size``, coarsest first
    ((28, 28) -> [(7, 7), (14, 14), (28, 28)]); ``size`` must be halvable that often."""
    count = resampling_count(size, requested)
    if any(s % 2**count for s in size):
        raise ValueError(f"image_size={format_size(tuple(size))} cannot be halved {count} times: pad it to "
                         f"{format_size(padded_size(size, 2**count))} first")
    return [tuple(s // 2 ** (count - i) for s in size) for i in range(count + 1)]


def _halvings(side: int, min_size: int) -> int:
    count = 0
    while side % 2 ** (count + 1) == 0 and side // 2 ** (count + 1) >= min_size:
        count += 1
    return count


def pad_to(x: Tensor, size: Sequence[int], mode: str = "replicate") -> Tensor:
    """Pad the trailing ``len(size)`` axes of ``x`` (N, C, *S) to ``size``, centred; a no-op when equal.

    Edge replication by default, so the padded border looks like the data (zeros would add a dark
    frame a generator then has to learn).
    """
    pads: list[int] = []
    for have, want in zip(reversed(x.shape[2:]), reversed(tuple(size))):
        if want < have:
            raise ValueError(f"cannot pad a side of {have} to {want}")
        pads += [(want - have) // 2, want - have - (want - have) // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode)


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Cut the trailing axes of ``x`` back to ``size``, centred: the inverse of :func:`pad_to`."""
    spatial = tuple(x.shape[2:])
    if spatial == tuple(size):
        return x
    index = [slice(None), slice(None)]
    for have, want in zip(spatial, size):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


def random_patches(x: Tensor, size: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
    """One patch of ``size`` at a uniformly random place in each sample of ``x`` (N, C, *S)."""
    spatial = tuple(x.shape[2:])
    if len(size) != len(spatial) or any(want > have for have, want in zip(spatial, size)):
        raise ValueError(f"cannot cut patches of {tuple(size)} from samples of {spatial}")
    starts = [torch.randint(0, have - want + 1, (x.shape[0],), generator=generator).tolist()
              for have, want in zip(spatial, size)]
    return torch.stack([x[(i, slice(None), *(slice(s[i], s[i] + w) for s, w in zip(starts, size)))]
                        for i in range(x.shape[0])])


def space_to_depth(x: Tensor, factors: Sequence[int]) -> Tensor:
    """Fold each ``factors`` block of the trailing axes of ``x`` (N, C, *S) into channels: (N, C * prod(factors),
    *S / factors), any number of spatial axes (``pixel_unshuffle`` for 2D and 3D alike); lossless."""
    n, c, *spatial = x.shape
    if len(factors) != len(spatial) or any(s % f for s, f in zip(spatial, factors)):
        raise ValueError(f"cannot fold a grid of {tuple(spatial)} by {tuple(factors)}: every side must be a multiple")
    split = [n, c]
    for side, factor in zip(spatial, factors):
        split += [side // factor, factor]
    dims = len(spatial)
    # (n, c, g0, f0, g1, f1, ...) -> (n, c, f0, f1, ..., g0, g1, ...)
    order = [0, 1] + [3 + 2 * i for i in range(dims)] + [2 + 2 * i for i in range(dims)]
    coarse = [side // factor for side, factor in zip(spatial, factors)]
    return x.reshape(split).permute(order).reshape(n, c * math.prod(factors), *coarse)
