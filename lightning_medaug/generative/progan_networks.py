"""Progressive-growing GAN networks (Karras et al. 2018, "Progressive Growing of GANs for Improved
Quality, Stability, and Variation"), 2D and 3D through ``spatial_dims``.

Both networks are built for the final resolution but run at a *level*: level 0 is the coarsest
grid (``image_size / 2**k``, at least 4: 28 -> 7, 32 -> 4), each further level doubles it. While a
new level fades in, its output is blended with the upsampled (generator) or downsampled
(discriminator) output of the level below by ``alpha`` in [0, 1], so the new layers start as a
small change to a network that already works.

* :class:`ProGANGenerator` - z (and a label embedding, concatenated) -> a dense layer to the start
  grid, then per level nearest-neighbour x2 upsampling and two 3x3 convolutions; pixelwise
  feature normalisation after every convolution; one linear 1x1 "toRGB" per level.
* :class:`ProGANDiscriminator` - one 1x1 "fromRGB" per level, two 3x3 convolutions and x2 average
  pooling per level, minibatch standard deviation, a dense head and a projection for labels
  (Miyato & Koyama 2018).

Weights use the equalised learning rate of :mod:`.stylegan_networks` (the technique comes from
this paper); upsampling is nearest-neighbour, as in the paper.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_medaug.generative.shapes import resolution_ladder
from lightning_medaug.generative.stylegan_networks import (
    EqualConv,
    EqualLinear,
    channels_at,
    critic_head,
)
from lightning_medaug.sizes import SizeLike, spatial_size

__all__ = ["ProGANDiscriminator", "ProGANGenerator", "pixel_norm"]

_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalise each pixel's feature vector to unit mean square (Karras et al. 2018, Sec. 4.2)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def check_level(level: int, alpha: float, num_levels: int) -> None:
    if not 0 <= level < num_levels:
        raise ValueError(f"level must be in [0, {num_levels - 1}], got {level}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


class _GeneratorBlock(nn.Module):
    """x2 nearest upsampling, then two 3x3 convolutions, each with leaky ReLU and pixel norm."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv(spatial_dims, in_channels, out_channels, 3, activate=True)
        self.conv1 = EqualConv(spatial_dims, out_channels, out_channels, 3, activate=True)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_norm(self.conv1(pixel_norm(self.conv0(_upsample(x)))))


class ProGANGenerator(nn.Module):
    """z -> image at any level. ``forward(z, labels, level, alpha)`` returns images at the level's
    resolution; ``level=num_levels - 1, alpha=1`` is the full-size network.

    Args:
        spatial_dims: 2 or 3. latent_dim: z size. out_channels: image channels.
        image_size: final size per axis. channel_base, channel_max: channels at resolution r are
            ``min(channel_max, channel_base // r)``. num_upsamples: levels - 1 (``None``: from
            ``image_size``). num_classes, embed_dim: label embedding concatenated to z.
    """

    def __init__(self, spatial_dims: int, latent_dim: int, out_channels: int, image_size: SizeLike,
                 channel_base: int = 1024, channel_max: int = 128, num_upsamples: int | None = None,
                 num_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        self.resolutions = resolution_ladder(image_size, num_upsamples)
        chans = [channels_at(r, channel_base, channel_max) for r in self.resolutions]
        self.start = self.resolutions[0]
        self.embed = EqualLinear(num_classes, embed_dim) if num_classes > 0 else None
        in_dim = latent_dim + (embed_dim if num_classes > 0 else 0)
        self.dense = EqualLinear(in_dim, chans[0] * math.prod(self.start), activate=True)
        self.conv = EqualConv(spatial_dims, chans[0], chans[0], 3, activate=True)
        self.blocks = nn.ModuleList(_GeneratorBlock(spatial_dims, a, b) for a, b in itertools.pairwise(chans))
        self.to_rgb = nn.ModuleList(EqualConv(spatial_dims, c, out_channels, 1) for c in chans)

    @property
    def num_levels(self) -> int:
        return len(self.resolutions)

    def forward(self, z: Tensor, labels: Tensor | None = None, level: int | None = None,
                alpha: float = 1.0) -> Tensor:
        level = self.num_levels - 1 if level is None else level
        check_level(level, alpha, self.num_levels)
        x = pixel_norm(z)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            x = torch.cat([x, pixel_norm(self.embed(F.one_hot(labels, self.num_classes).to(x.dtype)))], dim=1)
        h = pixel_norm(self.dense(x)).view(z.shape[0], -1, *self.start)
        h = pixel_norm(self.conv(h))
        previous = h
        for block in self.blocks[:level]:
            previous, h = h, block(h)
        out = self.to_rgb[level](h)
        if level > 0 and alpha < 1.0:  # fading in: blend with the level below, upsampled
            out = torch.lerp(_upsample(self.to_rgb[level - 1](previous)), out, alpha)
        return out


class _DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions with leaky ReLU, then x2 average pooling."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.conv0 = EqualConv(spatial_dims, in_channels, in_channels, 3, activate=True)
        self.conv1 = EqualConv(spatial_dims, in_channels, out_channels, 3, activate=True)

    def forward(self, x: Tensor) -> Tensor:
        return _POOL[self.spatial_dims](self.conv1(self.conv0(x)), 2)


class ProGANDiscriminator(nn.Module):
    """Image at any level -> one logit per sample; mirrors :class:`ProGANGenerator`.

    ``forward(x, labels, level, alpha)`` takes images at the level's resolution.

    Args:
        mbstd_group_size: group size of the minibatch standard deviation; 1 disables it.
    """

    def __init__(self, spatial_dims: int, in_channels: int, image_size: SizeLike, channel_base: int = 1024,
                 channel_max: int = 128, num_upsamples: int | None = None, num_classes: int = 0,
                 mbstd_group_size: int = 4):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        self.spatial_dims, self.mbstd_group_size = spatial_dims, mbstd_group_size
        self.resolutions = resolution_ladder(image_size, num_upsamples)
        chans = [channels_at(r, channel_base, channel_max) for r in self.resolutions]
        self.from_rgb = nn.ModuleList(EqualConv(spatial_dims, in_channels, c, 1, activate=True) for c in chans)
        # blocks[i] takes level i+1's features down to level i's grid
        self.blocks = nn.ModuleList(_DiscriminatorBlock(spatial_dims, b, a) for a, b in itertools.pairwise(chans))
        c = chans[0]
        self.conv = EqualConv(spatial_dims, c + (mbstd_group_size > 1), c, 3, activate=True)
        self.fc = EqualLinear(c * math.prod(self.resolutions[0]), c, activate=True)
        self.out = EqualLinear(c, 1)
        self.embed = EqualLinear(num_classes, c) if num_classes > 0 else None

    @property
    def num_levels(self) -> int:
        return len(self.resolutions)

    def forward(self, x: Tensor, labels: Tensor | None = None, level: int | None = None,
                alpha: float = 1.0) -> Tensor:
        level = self.num_levels - 1 if level is None else level
        check_level(level, alpha, self.num_levels)
        expected = self.resolutions[level]
        if tuple(x.shape[2:]) != expected:
            raise ValueError(f"level {level} takes images of sides {expected}, got shape {tuple(x.shape)}")
        h = self.from_rgb[level](x)
        if level > 0:
            h = self.blocks[level - 1](h)
            if alpha < 1.0:  # fading in: blend with the level below, fed the downsampled image
                h = torch.lerp(self.from_rgb[level - 1](_POOL[self.spatial_dims](x, 2)), h, alpha)
            for block in reversed(self.blocks[: level - 1]):
                h = block(h)
        return critic_head(self, h, labels)
