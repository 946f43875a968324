"""Image sizes: one side for every axis or one per axis, normalised to a tuple.

The bottom of the package (it imports nothing of it), so real-data modules, generators and the bank
agree on what ``image_size`` means without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MIN_SIDE", "SizeLike", "format_size", "spatial_size"]

#: What ``image_size`` arguments accept: one side for every axis, or one per axis ((H, W) / (D, H, W)).
SizeLike = int | Sequence[int]

#: The smallest side a generator is built for.
MIN_SIDE = 4


def spatial_size(image_size: SizeLike, spatial_dims: int, min_side: int = MIN_SIDE) -> tuple[int, ...]:
    """``image_size`` as a tuple of ``spatial_dims`` ints; ``ValueError`` on a wrong length or side."""
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int or one int per axis, got {image_size!r}")
    if isinstance(image_size, int):
        size = (image_size,) * spatial_dims
    elif isinstance(image_size, Sequence) and not isinstance(image_size, str) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in image_size):
        size = tuple(int(s) for s in image_size)
        if len(size) != spatial_dims:
            raise ValueError(f"image_size={list(size)} has {len(size)} sizes but spatial_dims={spatial_dims}: "
                             f"give one int or {spatial_dims} ints ({'(H, W)' if spatial_dims == 2 else '(D, H, W)'})")
    else:
        raise ValueError(f"image_size must be an int or one int per axis, got {image_size!r}")
    if min(size) < min_side:
        raise ValueError(f"image_size must be at least {min_side} on every axis, got {format_size(size)}")
    return size


def format_size(size: SizeLike) -> str:
    """``28`` -> ``"28"``, ``(16, 24, 32)`` -> ``"16x24x32"``, for messages."""
    return str(size) if isinstance(size, int) else "x".join(map(str, size))
