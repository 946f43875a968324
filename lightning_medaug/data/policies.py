"""Searched-policy augmentation baselines from torchvision, for the library's grayscale [-1, 1] images.

* ``"trivialaugment"``: torchvision v2 ``TrivialAugmentWide`` (Müller & Hutter 2021, "TrivialAugment:
  Tuning-free Yet State-of-the-Art Data Augmentation"): one random operation at a random magnitude.
* ``"randaugment"``: torchvision v2 ``RandAugment`` (Cubuk et al. 2020, "RandAugment: Practical
  automated data augmentation with a reduced search space"): ``num_ops`` random operations at one
  magnitude.

torchvision's policies expect uint8 (or [0, 1] float) images with 1 or 3 channels; the library's
images are float in [-1, 1]. So each image is quantised to uint8 (``(x + 1) * 127.5``), transformed
and mapped back, which keeps the policies' posterize / solarize / equalize operations meaningful;
on one channel, torchvision leaves the colour operations (saturation, hue) as the identity. The
policies are 2D only and have no mask support: volumes and segmentation samples are refused (use
:class:`~lightning_medaug.data.ClassicAugmentation` there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from lightning_medaug.data.batch import IMAGE_KEY, MASK_KEY
from lightning_medaug.data.transforms import reseed_in_worker
from lightning_medaug.validation import check_spatial_dims

__all__ = ["POLICIES", "PolicyAugmentation"]

#: Policy names accepted by :class:`PolicyAugmentation`.
POLICIES = ("trivialaugment", "randaugment")


class PolicyAugmentation:
    """Seeded ``TrivialAugmentWide`` / ``RandAugment`` of one sample dict ``{"image": (C, H, W), ...}``.

    Args:
        policy: ``"trivialaugment"`` or ``"randaugment"``.
        spatial_dims: must be 2 (the torchvision policies are 2D operations).
        num_ops, magnitude: RandAugment's number of operations and their magnitude (bin index).
        num_magnitude_bins: magnitude bins of either policy.
        fill: value (in [-1, 1]) of the area that rotations, shears and translations uncover.
        seed: seed of the random state; in a DataLoader worker it is combined with the worker's seed.

    The output image is float32 in [-1, 1] on the uint8 grid (256 levels), with the input's shape.
    """

    def __init__(self, policy: str = "trivialaugment", spatial_dims: int = 2, num_ops: int = 2, magnitude: int = 9,
                 num_magnitude_bins: int = 31, fill: float = -1.0, seed: int = 0):
        check_spatial_dims(spatial_dims)
        if spatial_dims != 2:
            raise ValueError(f"{policy} is a 2D image policy (torchvision); for volumes (spatial_dims=3) use "
                             "ClassicAugmentation (augmentation: classic)")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if num_magnitude_bins < 2 or not 0 <= magnitude < num_magnitude_bins or num_ops < 1:
            raise ValueError(f"need num_ops >= 1 and 0 <= magnitude < num_magnitude_bins (>= 2), got "
                             f"num_ops={num_ops}, magnitude={magnitude}, num_magnitude_bins={num_magnitude_bins}")
        if not -1.0 <= fill <= 1.0:
            raise ValueError(f"fill must be an image value in [-1, 1], got {fill}")
        fill_u8 = int(round((fill + 1.0) * 127.5))
        if policy == "trivialaugment":
            self.transform = v2.TrivialAugmentWide(num_magnitude_bins=num_magnitude_bins, fill=fill_u8)
        else:
            self.transform = v2.RandAugment(num_ops=num_ops, magnitude=magnitude,
                                            num_magnitude_bins=num_magnitude_bins, fill=fill_u8)
        self.policy, self.spatial_dims, self.seed = policy, spatial_dims, seed
        self.set_random_state(seed)

    def set_random_state(self, seed: int | Sequence[int]) -> PolicyAugmentation:
        """Restart every random draw from ``seed``."""
        self._rng = np.random.RandomState(seed)
        self._worker_seed: int | None = None
        return self

    def __call__(self, sample: dict) -> dict:
        reseed_in_worker(self)
        image = sample[IMAGE_KEY]
        if MASK_KEY in sample:
            raise ValueError(f"{self.policy} cannot keep a mask aligned (torchvision's policies have no mask "
                             "support); for segmentation use ClassicAugmentation (augmentation: classic)")
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"{self.policy} takes 2D images of shape (1 or 3, H, W), got {tuple(image.shape)}")
        quantised = torch.round((torch.as_tensor(image).float().clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
        # torchvision draws from torch's global generator: draw from our own seed without touching it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self._rng.randint(2**31 - 1)))
            out = self.transform(tv_tensors.Image(quantised))
        result = dict(sample)
        result[IMAGE_KEY] = out.as_subclass(torch.Tensor).float() / 127.5 - 1.0
        return result

    def __repr__(self) -> str:
        return f"PolicyAugmentation(policy={self.policy!r}, transform={self.transform!r}, seed={self.seed})"
