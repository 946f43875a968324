"""Generator and discriminator networks of the GAN family, 2D and 3D through ``spatial_dims``.

* :class:`DCGANGenerator` - latent vector -> image with strided transposed convolutions, batch
  norm and ReLU (Radford et al. 2016), optionally class-conditioned by a label embedding
  concatenated to ``z`` (Mirza & Osindero 2014).
* :class:`DCGANDiscriminator` - strided convolutions with LeakyReLU, optional spectral norm
  (Miyato et al. 2018) and a projection head for class labels (Miyato & Koyama 2018).
* :class:`PatchGAN` - MONAI's ``PatchDiscriminator`` (Isola et al. 2017) returning only its
  patch logits.
* :func:`unet_generator` - MONAI's ``UNet`` with a ``tanh`` head, for pix2pix and CycleGAN.

Every layer is built by MONAI from ``spatial_dims``, so one code path serves images and volumes.
Sizes are per axis (:mod:`.shapes`): a network is given the grid it runs on, which its module pads
the images to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv, Norm
from monai.networks.nets import PatchDiscriminator, UNet
from monai.networks.utils import normal_init
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from lightning_medaug.generative.shapes import crop_to, pad_to, padded_size, resampling_count
from lightning_medaug.sizes import SizeLike, format_size, spatial_size

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "PaddedUNet", "PatchGAN", "patch_layers", "unet_generator"]

_LEAKY = ("leakyrelu", {"negative_slope": 0.2})


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


class DCGANGenerator(nn.Module):
    """Latent vector (and optional class label) -> image in [-1, 1] (Radford et al. 2016).

    Args:
        spatial_dims: 2 or 3.
        latent_dim: size of ``z``.
        out_channels: image channels.
        image_size: output size per axis; the start grid is ``image_size / 2**num_upsamples``.
        channels: width of the last (finest) block; coarser blocks double it.
        num_upsamples: number of x2 transposed-convolution blocks; ``None`` picks it from
            ``image_size`` (see :func:`~.shapes.resampling_count`).
        num_classes: > 0 adds a label embedding concatenated to ``z``.
        embed_dim: size of that label embedding.
    """

    def __init__(self, spatial_dims: int, latent_dim: int, out_channels: int, image_size: SizeLike,
                 channels: int = 64, num_upsamples: int | None = None, num_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        self.spatial_dims, self.latent_dim, self.num_classes = spatial_dims, latent_dim, num_classes
        ups = resampling_count(image_size, num_upsamples)
        self.start_size = tuple(s // 2**ups for s in image_size)
        self.start_channels = channels * 2**ups
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None
        in_features = latent_dim + (embed_dim if num_classes > 0 else 0)
        self.project = nn.Linear(in_features, self.start_channels * math.prod(self.start_size))
        self.start = nn.Sequential(Norm[Norm.BATCH, spatial_dims](self.start_channels), nn.ReLU())
        blocks = []
        for i in range(ups):
            c_in, c_out = self.start_channels // 2**i, self.start_channels // 2 ** (i + 1)
            # kernel 4, stride 2, padding 1 doubles the size exactly (no checkerboard-prone overlap of 3).
            blocks.append(Convolution(spatial_dims, c_in, c_out, strides=2, kernel_size=4, padding=1,
                                      output_padding=0, is_transposed=True, act="RELU", norm="BATCH"))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            Convolution(spatial_dims, channels, out_channels, kernel_size=3, conv_only=True), nn.Tanh()
        )
        self.apply(normal_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.project(z).view(z.shape[0], self.start_channels, *self.start_size)
        return self.head(self.blocks(self.start(h)))


class DCGANDiscriminator(nn.Module):
    """Image (and optional class label) -> one logit per sample.

    Strided 4x4 convolutions with LeakyReLU(0.2) down to a coarse grid, global sum pooling, then a
    linear head. With ``num_classes > 0`` the projection term ``<embed(y), h>`` is added
    (Miyato & Koyama 2018). Spectral norm on every weight (Miyato et al. 2018) keeps it
    1-Lipschitz-ish, which stabilises training on small data. No batch norm: a gradient penalty is
    per sample, and batch statistics would leak between real and fake batches.
    """

    def __init__(self, spatial_dims: int, in_channels: int, image_size: SizeLike, channels: int = 64,
                 num_downsamples: int | None = None, num_classes: int = 0, spectral_norm: bool = True):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        downs = resampling_count(image_size, num_downsamples)
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(downs):
            c_out = channels * 2**i
            layers += [_sn(conv(c_in, c_out, kernel_size=4, stride=2, padding=1), spectral_norm), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers += [_sn(conv(c_in, c_in, kernel_size=3, padding=1), spectral_norm), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = _sn(nn.Linear(c_in, 1), spectral_norm)
        self.embed = _sn(nn.Embedding(num_classes, c_in), spectral_norm) if num_classes > 0 else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x).flatten(2).sum(-1)  # global sum pooling over any number of spatial axes
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels")
            out = out + (self.embed(labels) * h).sum(1)
        return out


def patch_layers(image_size: Sequence[int], requested: int | None = None) -> int:
    """Strided layers of a PatchGAN: at most 3 (the 70x70 PatchGAN), leaving a patch grid >= 4 on
    the smallest axis."""
    image_size = min(image_size)
    if requested is not None:
        if requested < 1 or image_size // 2**requested < 4:
            raise ValueError(
                f"discriminator_layers={requested} is too deep for image_size={image_size}: "
                f"image_size / 2**layers must be at least 4"
            )
        return requested
    count = 0
    while count < 3 and image_size // 2 ** (count + 1) >= 4:
        count += 1
    if count == 0:
        raise ValueError(f"image_size={image_size} is too small for a PatchGAN discriminator: use at least 8")
    return count


class PatchGAN(nn.Module):
    """MONAI's ``PatchDiscriminator`` (Isola et al. 2017) returning only the patch logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (e.g. mask + image for pix2pix).
        image_size: size of the input per axis, used to choose the depth.
        channels: width of the first layer.
        num_layers: strided layers; ``None`` chooses from ``image_size`` (see :func:`patch_layers`).
        norm: MONAI norm name; instance norm keeps the output independent of the batch.
    """

    def __init__(self, spatial_dims: int, in_channels: int, image_size: SizeLike, channels: int = 64,
                 num_layers: int | None = None, norm: str = "INSTANCE"):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        # MONAI counts the first (un-normalised) conv separately; its last layer has stride 1.
        self.net = PatchDiscriminator(spatial_dims=spatial_dims, channels=channels, in_channels=in_channels,
                                      num_layers_d=patch_layers(image_size, num_layers), activation=_LEAKY,
                                      norm=norm, last_conv_kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[-1]


class PaddedUNet(nn.Sequential):
    """A U-Net (and its head) that pads its input to ``network_size`` and crops the output back
    to the input's size, so any image size passes its x2 downsamplings."""

    def __init__(self, network_size: Sequence[int], *modules: nn.Module):
        super().__init__(*modules)
        self.network_size = tuple(network_size)

    def forward(self, x: Tensor) -> Tensor:
        return crop_to(super().forward(pad_to(x, self.network_size)), x.shape[2:])


def unet_generator(spatial_dims: int, in_channels: int, out_channels: int, image_size: SizeLike,
                   channels: int = 32, levels: int = 4, dropout: float = 0.0, num_res_units: int = 0) -> PaddedUNet:
    """MONAI ``UNet`` (Ronneberger et al. 2015) with a ``tanh`` head: widths ``channels * 2**i``.

    Instance norm, so translation does not depend on the batch (Isola 2017 used test-time batch
    statistics for the same reason). Sizes are padded inside to multiples of ``2**(levels-1)``,
    which must leave a bottleneck of at least 2.
    """
    if levels < 2:
        raise ValueError(f"generator_levels must be at least 2, got {levels}")
    image_size = spatial_size(image_size, spatial_dims, min_side=1)
    network_size = padded_size(image_size, 2 ** (levels - 1))
    if min(network_size) // 2 ** (levels - 1) < 2:
        raise ValueError(
            f"image_size={format_size(tuple(image_size))} does not fit a U-Net with {levels} levels: every side "
            f"must leave a bottleneck of at least 2 after {levels - 1} halvings; lower generator_levels"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    unet = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=[channels * 2**i for i in range(levels)], strides=[2] * (levels - 1),
                num_res_units=num_res_units, norm="INSTANCE", dropout=dropout)
    return PaddedUNet(network_size, unet, nn.Tanh())
