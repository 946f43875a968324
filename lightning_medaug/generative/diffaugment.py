"""Differentiable augmentation for data-efficient GAN training (DiffAugment, Zhao et al. 2020).

With little data a discriminator memorises the training images and its gradients stop being
useful to the generator. DiffAugment applies the same family of random, *differentiable*
transforms to real and generated images before every discriminator call (in both the D and the
G step), so the discriminator never sees un-augmented images and the generator still gets
gradients through the transform. Transforms (written from the paper's description):

* ``color``: random brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the channel mean)
  and contrast (x U(0.5, 1.5) around the image mean);
* ``translation``: integer shift of up to ``translation_ratio`` of each axis, filled with ``fill``;
* ``cutout``: one box of ``cutout_ratio`` of each axis set to ``fill``.

Each spatial axis is handled by the same loop, so 2D images and 3D volumes share one code path.
``fill`` defaults to -1, the background of the library's [-1, 1] images (Zhao used 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_medaug.data.batch import IMAGE_RANGE

__all__ = ["DIFFAUGMENT_POLICIES", "DiffAugment", "diff_augment"]

DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""`` -> ``()``; ValueError on unknown names."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in DIFFAUGMENT_POLICIES]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment policy {unknown}: use a comma-separated subset of "
            f"{DIFFAUGMENT_POLICIES}, or '' for none"
        )
    return names


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """U(0, 1) drawn on the generator's device (so a seed gives the same draw everywhere), moved to ``like``."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randint(low, high, (n,), generator=generator, device=device).to(like.device)


def _color(x: Tensor, generator: torch.Generator | None) -> Tensor:
    n, spatial_dims = x.shape[0], x.ndim - 2
    per_sample = (n,) + (1,) * (spatial_dims + 1)
    x = x + (_rand(per_sample, generator, x) - 0.5).to(x.dtype)
    mean = x.mean(dim=1, keepdim=True)  # saturation: a no-op for one channel, as it should be
    x = (x - mean) * (_rand(per_sample, generator, x) * 2).to(x.dtype) + mean
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (x - mean) * (_rand(per_sample, generator, x) + 0.5).to(x.dtype) + mean


def _translation(x: Tensor, generator: torch.Generator | None, ratio: float, fill: float) -> Tensor:
    n, spatial = x.shape[0], x.shape[2:]
    theta = torch.zeros(n, len(spatial), len(spatial) + 1, device=x.device)
    theta[:, :, : len(spatial)] = torch.eye(len(spatial), device=x.device)
    for axis, size in enumerate(spatial):
        max_shift = int(size * ratio + 0.5)
        shift = _randint(-max_shift, max_shift + 1, n, generator, x).float()
        # affine_grid orders coordinates last axis first (x=W, y=H, z=D); one pixel is 2/size.
        theta[:, len(spatial) - 1 - axis, -1] = -2.0 * shift / size
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros: shift by ``fill`` so the padding takes the fill value.
    # Nearest sampling at exact pixel centres is an exact, still differentiable, integer shift.
    moved = F.grid_sample(x.float() - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (moved + fill).to(x.dtype)


def _cutout(x: Tensor, generator: torch.Generator | None, ratio: float, fill: float) -> Tensor:
    n, spatial = x.shape[0], x.shape[2:]
    inside = torch.ones((n, 1) + (1,) * len(spatial), dtype=torch.bool, device=x.device)
    for axis, size in enumerate(spatial):
        cut = int(size * ratio + 0.5)
        start = _randint(0, size, n, generator, x) - cut // 2
        view = [1] * (len(spatial) + 2)
        view[axis + 2] = size
        coords = torch.arange(size, device=x.device).view(view)
        start = start.view((n,) + (1,) * (len(spatial) + 1))
        inside = inside & (coords >= start) & (coords < start + cut)
    return torch.where(inside, torch.full_like(x, fill), x)


def diff_augment(x: Tensor, policy: str = "color,translation,cutout", generator: torch.Generator | None = None,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5, fill: float = IMAGE_RANGE[0]) -> Tensor:
    """Apply DiffAugment (Zhao et al. 2020) to a batch (N, C, *spatial); gradients flow to ``x``.

    Random parameters are drawn per sample from ``generator`` (global RNG when ``None``), so the
    same seed gives the same transform to any two batches of the same shape.
    """
    for name in parse_policy(policy):
        if name == "color":
            x = _color(x, generator)
        elif name == "translation":
            x = _translation(x, generator, translation_ratio, fill)
        else:
            x = _cutout(x, generator, cutout_ratio, fill)
    return x


class DiffAugment(nn.Module):
    """:func:`diff_augment` as a module with its policy validated up front; no parameters.

    Args:
        policy: comma-separated subset of ``"color,translation,cutout"``; ``""`` is the identity.
        translation_ratio: largest shift as a fraction of each axis (Zhao: 1/8).
        cutout_ratio: side of the cut-out box as a fraction of each axis (Zhao: 1/2).
        fill: value of pixels shifted in or cut out.
    """

    def __init__(self, policy: str = "color,translation,cutout", translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5, fill: float = IMAGE_RANGE[0]):
        super().__init__()
        self.policy = ",".join(parse_policy(policy))
        if not 0.0 <= translation_ratio < 0.5:
            raise ValueError(f"translation_ratio must be in [0, 0.5), got {translation_ratio}")
        if not 0.0 < cutout_ratio < 1.0:
            raise ValueError(f"cutout_ratio must be in (0, 1), got {cutout_ratio}")
        self.translation_ratio, self.cutout_ratio, self.fill = translation_ratio, cutout_ratio, fill

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return diff_augment(x, self.policy, generator, self.translation_ratio, self.cutout_ratio, self.fill)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"
