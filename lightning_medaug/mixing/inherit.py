"""Which part of the real training set's transform synthetic samples go through ("inherit").

A synthetic sample is already an image in memory, shaped and scaled like a finished real sample,
so loading and preprocessing steps (``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityd``,
``ToTensor``) must not run on it; the random augmentations should. MONAI draws the same line in
``CacheDataset``, which caches every transform before the first ``Randomizable`` one and re-runs
the rest each epoch: synthetic samples get that random tail. A transform that is not a MONAI
``Compose`` runs whole on dict samples (the user's own dict transform) and not at all on
tuple samples (torchvision transforms start from PIL images); pass ``synthetic_transform=`` to
choose another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["random_tail", "inherited_transform"]


def random_tail(transform: Any) -> Callable | None:
    """The transforms of a MONAI ``Compose`` from its first random one on (None when none is random)."""
    from monai.transforms import Compose, Randomizable

    if isinstance(transform, Compose) and type(transform) is not Compose:  # OneOf, SomeOf, RandomOrder: random
        return transform
    if not isinstance(transform, Compose):  # MONAI's Compose is itself Randomizable: ask about it last
        return transform if isinstance(transform, Randomizable) else None
    steps = list(transform.transforms)
    for i, step in enumerate(steps):
        if type(step) is Compose:  # a nested Compose with random steps inside: its tail, then the rest
            inner = random_tail(step)
            if inner is not None:
                return Compose([inner, *steps[i + 1:]])
        elif isinstance(step, Randomizable):
            return Compose(steps[i:], map_items=transform.map_items, unpack_items=transform.unpack_items)
    return None


def inherited_transform(dataset: Any, is_dict: bool) -> Callable | None:
    """The part of ``dataset.transform`` that synthetic samples of this dataset go through."""
    transform = getattr(dataset, "transform", None)
    if transform is None:
        return None
    try:
        from monai.transforms import Compose, Randomizable
    except ImportError:  # MONAI is a dependency, but a trimmed install should still mix
        Compose = Randomizable = ()  # noqa: N806
    if Compose and isinstance(transform, (Compose, Randomizable)):
        return random_tail(transform)
    return transform if is_dict else None
