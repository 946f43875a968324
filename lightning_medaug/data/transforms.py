"""Classic (non-generative) augmentation: the baseline that generative augmentation is compared to.

Random flips, a small affine (rotation, scaling, translation) and intensity jitter (gamma contrast,
Gaussian noise), built from MONAI dictionary transforms. The same random spatial transform is applied
to ``"image"`` and, when present, ``"mask"`` (nearest-neighbour for the mask), so they stay aligned.
Outputs keep the library's convention: plain float32 tensors, images clipped to [-1, 1], masks in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGridDistortiond,
)
from torch import Tensor

from lightning_medaug.data.batch import IMAGE_KEY, MASK_KEY
from lightning_medaug.validation import check_spatial_dims

__all__ = ["ClassicAugmentation", "classic_augmentation", "reseed_in_worker"]


class ClassicAugmentation:
    """Seeded classic augmentation of one sample dict ``{"image": (C, *S), "mask"?: (1, *S), ...}``.

    Args:
        spatial_dims: 2 or 3.
        flip_prob: probability of flipping along each axis of ``flip_axes``.
        flip_axes: spatial axes to flip (0-based, of the spatial part); default the last one
            (left-right). Pass ``()`` where laterality matters, e.g. the heart in chest X-rays.
        affine_prob: probability of applying the random affine.
        rotate_degrees: maximum rotation about each axis, in degrees.
        scale: maximum relative zoom in or out per axis (0.1 = 90%..110%).
        translate: maximum shift as a fraction of the side length per axis.
        contrast_prob, gamma: probability and range of the random gamma contrast change.
        noise_prob, noise_std: probability and std of additive Gaussian noise (image units).
        distort_prob, distort_cells, distort_limit: probability of a random grid distortion (MONAI's
            ``RandGridDistortiond``, image and mask alike: a smooth non-rigid warp, the elastic kind of
            deformation segmentation work relies on), its grid cells per axis and the largest relative
            shift of a grid line. Off by default.
        seed: seed of the random state; in a DataLoader worker it is combined with the worker's
            seed so that workers (and epochs, without persistent workers) draw different transforms.
    """

    def __init__(self, spatial_dims: int = 2, flip_prob: float = 0.5, flip_axes: Sequence[int] | None = None,
                 affine_prob: float = 0.5, rotate_degrees: float = 10.0, scale: float = 0.1, translate: float = 0.05,
                 contrast_prob: float = 0.3, gamma: tuple[float, float] = (0.8, 1.25), noise_prob: float = 0.2,
                 noise_std: float = 0.02, distort_prob: float = 0.0, distort_cells: int = 5,
                 distort_limit: float = 0.1, seed: int = 0):
        check_spatial_dims(spatial_dims)
        for name, p in (("flip_prob", flip_prob), ("affine_prob", affine_prob), ("contrast_prob", contrast_prob),
                        ("noise_prob", noise_prob), ("distort_prob", distort_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.flip_axes = tuple(flip_axes) if flip_axes is not None else (spatial_dims - 1,)
        if any(not 0 <= a < spatial_dims for a in self.flip_axes):
            raise ValueError(f"flip_axes must be spatial axes in 0..{spatial_dims - 1}, got {flip_axes}")
        if rotate_degrees < 0 or not 0 <= scale < 1 or not 0 <= translate < 0.5:
            raise ValueError(f"need rotate_degrees >= 0, 0 <= scale < 1, 0 <= translate < 0.5; got {rotate_degrees}, "
                             f"{scale}, {translate}")
        if not 0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma must be (low, high) with 0 < low <= high, got {gamma}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if distort_cells < 1 or not 0 <= distort_limit < 1:
            raise ValueError(f"need distort_cells >= 1 and 0 <= distort_limit < 1, got {distort_cells}, "
                             f"{distort_limit}")
        self.spatial_dims, self.flip_prob, self.affine_prob = spatial_dims, flip_prob, affine_prob
        self.rotate, self.scale, self.translate = float(np.deg2rad(rotate_degrees)), scale, translate
        self.contrast_prob, self.gamma = contrast_prob, tuple(gamma)
        self.noise_prob, self.noise_std, self.seed = noise_prob, noise_std, seed
        self.distort_prob, self.distort_cells, self.distort_limit = distort_prob, distort_cells, distort_limit
        self.set_random_state(seed)

    def set_random_state(self, seed: int | Sequence[int]) -> ClassicAugmentation:
        """Restart every random draw from ``seed``."""
        self._rng = np.random.RandomState(seed)
        self._pipelines: dict[tuple[int, ...], Compose] = {}
        self._worker_seed: int | None = None
        return self

    def _pipeline(self, shape: tuple[int, ...]) -> Compose:
        # Built per spatial shape, because MONAI translates in voxels and ours is a fraction of the side.
        if shape not in self._pipelines:
            sd, keys = self.spatial_dims, [IMAGE_KEY, MASK_KEY]
            angles = (self.rotate,) if sd == 2 else (self.rotate,) * 3
            transforms = [RandFlipd(keys, prob=self.flip_prob, spatial_axis=a, allow_missing_keys=True)
                          for a in self.flip_axes]
            transforms += [
                RandAffined(keys, prob=self.affine_prob, rotate_range=angles, scale_range=(self.scale,) * sd,
                            translate_range=[self.translate * s for s in shape], mode=("bilinear", "nearest"),
                            # Reflection pads image and mask alike; zeros would be mid-grey in [-1, 1].
                            padding_mode="reflection", allow_missing_keys=True),
            ]
            if self.distort_prob > 0:  # only when asked: the draws of the default pipeline stay as they were
                transforms.append(RandGridDistortiond(
                    keys, num_cells=self.distort_cells, prob=self.distort_prob, mode=("bilinear", "nearest"),
                    distort_limit=(-self.distort_limit, self.distort_limit), allow_missing_keys=True))
            transforms += [
                RandAdjustContrastd(IMAGE_KEY, prob=self.contrast_prob, gamma=self.gamma),
                RandGaussianNoised(IMAGE_KEY, prob=self.noise_prob, std=self.noise_std),
            ]
            pipeline = Compose(transforms)
            pipeline.set_random_state(seed=int(self._rng.randint(2**31 - 1)))
            self._pipelines[shape] = pipeline
        return self._pipelines[shape]

    def __call__(self, sample: dict) -> dict:
        reseed_in_worker(self)
        image = sample[IMAGE_KEY]
        if image.ndim != self.spatial_dims + 1:
            raise ValueError(f"expected an image of shape (C, *S) with {self.spatial_dims} spatial dims, "
                             f"got {tuple(image.shape)}")
        out = self._pipeline(tuple(image.shape[1:]))(dict(sample))
        result = dict(sample)
        result[IMAGE_KEY] = _plain(out[IMAGE_KEY]).float().clamp(-1.0, 1.0)
        if MASK_KEY in sample:
            result[MASK_KEY] = _plain(out[MASK_KEY]).float()
        return result

    def __repr__(self) -> str:
        return (f"ClassicAugmentation(spatial_dims={self.spatial_dims}, flip_axes={self.flip_axes}, "
                f"rotate={np.rad2deg(self.rotate):.1f}deg, scale={self.scale}, translate={self.translate}, "
                f"gamma={self.gamma}, noise_std={self.noise_std}, distort_prob={self.distort_prob}, seed={self.seed})")


def reseed_in_worker(transform: Any) -> None:
    """In a DataLoader worker, restart ``transform``'s draws from ``[transform.seed, worker seed]``, once per
    worker seed, so that workers (and epochs, without persistent workers) draw different transforms.

    ``transform`` has ``seed``, ``_worker_seed`` and ``set_random_state(seed)`` (which clears ``_worker_seed``).
    """
    info = torch.utils.data.get_worker_info()
    if info is not None and transform._worker_seed != info.seed:
        transform.set_random_state([transform.seed, info.seed % 2**32])
        transform._worker_seed = info.seed


def _plain(x: Tensor | np.ndarray) -> Tensor:
    """A plain tensor: MONAI returns MetaTensors, which other code (collate, torch.compile) need not know."""
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return torch.as_tensor(x)


def classic_augmentation(spatial_dims: int = 2, seed: int = 0, **kwargs) -> ClassicAugmentation:
    """The classic-augmentation baseline as a callable on sample dicts; see :class:`ClassicAugmentation`."""
    return ClassicAugmentation(spatial_dims=spatial_dims, seed=seed, **kwargs)
