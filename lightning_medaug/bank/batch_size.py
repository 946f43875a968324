"""How many samples a bank write asks of ``sample`` at once when the user does not say."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["DEFAULT_BATCH_PIXELS", "MAX_DEFAULT_BATCH", "default_batch_size"]

#: Pixels (voxels in 3D) per ``sample`` call at the default batch size. A default DDPM's sampling
#: step then peaks at 2.6-2.7 GB at any size (measured on the CPU: 256 x 128^2, 128 x 32^3, 16 x 64^3).
DEFAULT_BATCH_PIXELS = 2**22
#: The default batch size of small images (up to 128x128).
MAX_DEFAULT_BATCH = 256


def default_batch_size(image_shape: Sequence[int]) -> int:
    """The largest power of two up to :data:`MAX_DEFAULT_BATCH` whose batch holds at most
    :data:`DEFAULT_BATCH_PIXELS` pixels (at least 1): 256 images up to 128x128, 64 at 256x256,
    128 volumes at 32^3, 16 at 64^3 and 2 at 128^3, so a call needs about the same memory at any size.

    ``image_shape`` is ``(C, *spatial)``; channels do not count, since a network's width, not its
    input, sets the size of its activations.
    """
    pixels = math.prod(image_shape[1:])
    batch = MAX_DEFAULT_BATCH
    while batch > 1 and batch * pixels > DEFAULT_BATCH_PIXELS:
        batch //= 2
    return batch
