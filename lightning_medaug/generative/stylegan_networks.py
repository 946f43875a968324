"""StyleGAN2 networks (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
2D and 3D through ``spatial_dims``.

* :class:`MappingNetwork` - z (and a label embedding, concatenated) -> w with an MLP; keeps the
  running mean of w for the truncation trick.
* :class:`ModulatedConv` - weight modulation and demodulation, run as one grouped convolution
  (``F.conv2d`` / ``F.conv3d`` chosen by ``spatial_dims``), with per-pixel noise inputs.
* :class:`StyleGAN2Generator` - learned constant input, skip architecture: every resolution adds
  its toRGB output to the upsampled image of the coarser ones.
* :class:`StyleGAN2Discriminator` - residual blocks, minibatch standard deviation and a
  projection head for class labels (Miyato & Koyama 2018).

All weights use the equalised learning rate of Karras et al. 2018 (scaled at run time by
1/sqrt(fan_in)). Simplifications against the paper, for small CPU-sized models: resampling by
bilinear/trilinear interpolation and average pooling instead of FIR-filtered transposed/strided
convolutions, and no output clamping. Non-power-of-two sizes start from a coarser grid:
``image_size = start * 2**k`` with the largest ``k`` leaving ``start >= 4`` (28 = 7 * 2**2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_medaug.generative.shapes import resolution_ladder
from lightning_medaug.sizes import SizeLike, spatial_size

__all__ = ["EqualConv", "EqualLinear", "MappingNetwork", "ModulatedConv", "StyleGAN2Discriminator",
           "StyleGAN2Generator", "channels_at", "critic_head", "minibatch_stddev"]

_CONV = {2: F.conv2d, 3: F.conv3d}
_POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}
_UPSAMPLE_MODE = {2: "bilinear", 3: "trilinear"}


def _lrelu(x: Tensor) -> Tensor:
    """LeakyReLU(0.2) with the sqrt(2) gain of StyleGAN, so activations keep unit variance."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


def _upsample(x: Tensor, spatial_dims: int) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode=_UPSAMPLE_MODE[spatial_dims], align_corners=False)


def channels_at(resolution: int | Sequence[int], channel_base: int, channel_max: int) -> int:
    """Feature channels at ``resolution``: ``min(channel_max, channel_base // resolution)`` (StyleGAN);
    of a grid with several sizes, its largest side counts."""
    side = resolution if isinstance(resolution, int) else max(resolution)
    return max(1, min(channel_max, channel_base // side))


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (Karras et al. 2018) and an optional ``lr_mul``."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.gain, self.lr_mul, self.activate = lr_mul / math.sqrt(in_features), lr_mul, activate

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight * self.gain, self.bias * self.lr_mul)
        return _lrelu(out) if self.activate else out


class EqualConv(nn.Module):
    """Convolution with equalised learning rate, 2D or 3D, 'same' padding."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bias: bool = True, activate: bool = False):
        super().__init__()
        self.spatial_dims, self.activate = spatial_dims, activate
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *([kernel_size] * spatial_dims)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = 1.0 / math.sqrt(in_channels * kernel_size**spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        out = _CONV[self.spatial_dims](x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return _lrelu(out) if self.activate else out


class MappingNetwork(nn.Module):
    """z (+ label embedding) -> w: normalised inputs, ``num_layers`` leaky-ReLU layers (lr_mul 0.01).

    In training mode the running mean of w is tracked (per class when conditional) for the
    truncation trick ``w = w_avg + psi * (w - w_avg)``.
    """

    w_avg: Tensor

    def __init__(self, latent_dim: int, w_dim: int, num_layers: int = 4, num_classes: int = 0,
                 embed_dim: int = 32, w_avg_beta: float = 0.995):
        super().__init__()
        self.num_classes, self.w_avg_beta = num_classes, w_avg_beta
        self.embed = EqualLinear(num_classes, embed_dim) if num_classes > 0 else None
        dims = [latent_dim + (embed_dim if num_classes > 0 else 0)] + [w_dim] * num_layers
        # lr_mul 0.01: the mapping network learns 100x slower than the synthesis network (StyleGAN).
        layers = [EqualLinear(a, b, lr_mul=0.01, activate=True) for a, b in itertools.pairwise(dims)]
        self.layers = nn.Sequential(*layers)
        self.register_buffer("w_avg", torch.zeros(max(num_classes, 1), w_dim))

    def forward(self, z: Tensor, labels: Tensor | None = None, truncation_psi: float = 1.0) -> Tensor:
        x = F.normalize(z, dim=1) * math.sqrt(z.shape[1])  # pixel norm: z on the sphere of radius sqrt(dim)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this mapping network is class-conditional: pass labels")
            y = self.embed(F.one_hot(labels, self.num_classes).to(x.dtype))
            x = torch.cat([x, F.normalize(y, dim=1) * math.sqrt(y.shape[1])], dim=1)
        w = self.layers(x)
        rows = labels if self.embed is not None else torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
        if self.training:
            self._track_mean(w.detach().float(), rows)
        if truncation_psi != 1.0:
            w = torch.lerp(self.w_avg[rows].to(w.dtype), w, truncation_psi)
        return w

    @torch.no_grad()
    def _track_mean(self, w: Tensor, rows: Tensor) -> None:
        sums = torch.zeros_like(self.w_avg).index_add_(0, rows, w)
        counts = torch.bincount(rows, minlength=self.w_avg.shape[0]).unsqueeze(1)
        seen = counts > 0
        batch_mean = sums / counts.clamp(min=1)
        self.w_avg.copy_(torch.where(seen, torch.lerp(batch_mean, self.w_avg, self.w_avg_beta), self.w_avg))


class ModulatedConv(nn.Module):
    """Modulated convolution (Karras et al. 2020, Sec. 2.2): a per-sample style scales the input
    channels of the weight, demodulation rescales each output channel to unit norm, and the batch
    runs as one grouped convolution with ``groups = N``.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels, kernel_size: the convolution.
        w_dim: size of w; an affine layer maps it to one style per input channel.
        demodulate: False for toRGB layers.
        upsample: x2 upsampling before the convolution.
        noise: add per-pixel Gaussian noise with a learned strength (Karras et al. 2019).
        activate: bias + LeakyReLU after the convolution (toRGB layers only add the bias).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, upsample: bool = False, noise: bool = True, activate: bool = True):
        super().__init__()
        self.spatial_dims, self.demodulate, self.upsample, self.activate = spatial_dims, demodulate, upsample, activate
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: plain convolution
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *([kernel_size] * spatial_dims)))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(())) if noise else None
        self.gain = 1.0 / math.sqrt(in_channels * kernel_size**spatial_dims)

    def forward(self, x: Tensor, w: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n = x.shape[0]
        kernel_axes = (1,) * self.spatial_dims
        styles = self.affine(w)  # (N, C_in)
        weight = self.weight.unsqueeze(0) * self.gain * styles.view(n, 1, -1, *kernel_axes)  # (N, C_out, C_in, k...)
        if self.demodulate:
            sum_axes = tuple(range(2, weight.ndim))
            weight = weight * torch.rsqrt(weight.square().sum(dim=sum_axes, keepdim=True) + 1e-8)
        if self.upsample:
            x = _upsample(x, self.spatial_dims)
        # Fold the batch into channels so that every sample is convolved with its own weight.
        out = _CONV[self.spatial_dims](x.reshape(1, -1, *x.shape[2:]), weight.reshape(-1, *weight.shape[2:]),
                                       padding=self.weight.shape[-1] // 2, groups=n)
        out = out.reshape(n, -1, *out.shape[2:])
        if self.noise_strength is not None:
            device = generator.device if generator is not None else out.device
            noise = torch.randn((n, 1, *out.shape[2:]), generator=generator, device=device, dtype=out.dtype)
            out = out + self.noise_strength.to(out.dtype) * noise.to(out.device)
        out = out + self.bias.to(out.dtype).view(1, -1, *kernel_axes)
        return _lrelu(out) if self.activate else out


class StyleGAN2Generator(nn.Module):
    """Mapping network + skip-architecture synthesis network (Karras et al. 2020, Fig. 7).

    Args:
        spatial_dims: 2 or 3.
        latent_dim, w_dim, mapping_layers: mapping network sizes.
        out_channels: image channels.
        image_size: output size per axis; the constant input is ``image_size / 2**num_upsamples``.
        channel_base, channel_max: channels at resolution r are ``min(channel_max, channel_base // r)``.
        num_upsamples: x2 stages; ``None`` picks the most that leave a start grid >= 4.
        num_classes, embed_dim: label embedding concatenated to z in the mapping network.
    """

    def __init__(self, spatial_dims: int, latent_dim: int, w_dim: int, out_channels: int, image_size: SizeLike,
                 channel_base: int = 1024, channel_max: int = 128, num_upsamples: int | None = None,
                 mapping_layers: int = 4, num_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        self.spatial_dims, self.latent_dim, self.num_classes = spatial_dims, latent_dim, num_classes
        resolutions = resolution_ladder(image_size, num_upsamples)
        chans = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.mapping = MappingNetwork(latent_dim, w_dim, mapping_layers, num_classes, embed_dim)
        self.const = nn.Parameter(torch.randn(chans[0], *resolutions[0]))
        self.convs = nn.ModuleList([ModulatedConv(spatial_dims, chans[0], chans[0], 3, w_dim)])
        self.to_rgb = nn.ModuleList()
        for c_in, c_out in itertools.pairwise(chans):
            self.convs.append(ModulatedConv(spatial_dims, c_in, c_out, 3, w_dim, upsample=True))
            self.convs.append(ModulatedConv(spatial_dims, c_out, c_out, 3, w_dim))
        for c in chans:
            self.to_rgb.append(ModulatedConv(spatial_dims, c, out_channels, 1, w_dim, demodulate=False, noise=False,
                                             activate=False))
        # One w per convolution plus one for the last toRGB; each toRGB shares the next conv's w.
        self.num_ws = len(self.convs) + 1

    def synthesis(self, ws: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, num_ws, w_dim) -> image; ``generator`` draws the noise inputs."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape (N, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        x = self.const.unsqueeze(0).expand(ws.shape[0], *self.const.shape).to(ws.dtype)
        x = self.convs[0](x, ws[:, 0], generator)
        image = self.to_rgb[0](x, ws[:, 1])
        for level in range(1, len(self.to_rgb)):
            x = self.convs[2 * level - 1](x, ws[:, 2 * level - 1], generator)
            x = self.convs[2 * level](x, ws[:, 2 * level], generator)
            # Skip architecture: the image is refined additively at every resolution.
            image = _upsample(image, self.spatial_dims) + self.to_rgb[level](x, ws[:, 2 * level + 1])
        return image

    def map(self, z: Tensor, labels: Tensor | None = None, truncation_psi: float = 1.0) -> Tensor:
        """z -> ws (N, num_ws, w_dim), the same w broadcast to every layer."""
        return self.mapping(z, labels, truncation_psi).unsqueeze(1).repeat(1, self.num_ws, 1)

    def forward(self, z: Tensor, labels: Tensor | None = None, truncation_psi: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
        return self.synthesis(self.map(z, labels, truncation_psi), generator)


def minibatch_stddev(x: Tensor, group_size: int) -> Tensor:
    """Append the mean over channels and pixels of the per-group std of features (Karras et al. 2018),
    so D can see a lack of variety across a batch. Groups are the largest divisor of N <= group_size."""
    n = x.shape[0]
    g = math.gcd(n, group_size)
    y = x.float().reshape(g, n // g, *x.shape[1:])
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (N/g, C, *spatial)
    std = std.mean(dim=tuple(range(1, std.ndim)))  # one number per group
    std = std.repeat(g).view(n, 1, *([1] * (x.ndim - 2))).expand(n, 1, *x.shape[2:])
    return torch.cat([x, std.to(x.dtype)], dim=1)


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions and a x2 downsampling, plus a 1x1 skip, summed with 1/sqrt(2)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.conv0 = EqualConv(spatial_dims, in_channels, in_channels, 3, activate=True)
        self.conv1 = EqualConv(spatial_dims, in_channels, out_channels, 3, activate=True)
        self.skip = EqualConv(spatial_dims, in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pool = _POOL[self.spatial_dims]
        skip = self.skip(pool(x, 2))
        return (skip + pool(self.conv1(self.conv0(x)), 2)) * math.sqrt(0.5)


class StyleGAN2Discriminator(nn.Module):
    """Residual discriminator (Karras et al. 2020, Fig. 7c) with minibatch-stddev and a projection
    head for labels (Miyato & Koyama 2018). Arguments mirror :class:`StyleGAN2Generator`.

    Args:
        mbstd_group_size: group size of the minibatch standard deviation; 1 disables it.
    """

    def __init__(self, spatial_dims: int, in_channels: int, image_size: SizeLike, channel_base: int = 1024,
                 channel_max: int = 128, num_downsamples: int | None = None, num_classes: int = 0,
                 mbstd_group_size: int = 4):
        super().__init__()
        image_size = spatial_size(image_size, spatial_dims, min_side=1)
        resolutions = resolution_ladder(image_size, num_downsamples)[::-1]
        chans = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.mbstd_group_size = mbstd_group_size
        self.from_rgb = EqualConv(spatial_dims, in_channels, chans[0], 1, activate=True)
        self.blocks = nn.Sequential(*[_ResidualBlock(spatial_dims, a, b) for a, b in itertools.pairwise(chans)])
        c = chans[-1]
        self.conv = EqualConv(spatial_dims, c + (mbstd_group_size > 1), c, 3, activate=True)
        self.fc = EqualLinear(c * math.prod(resolutions[-1]), c, activate=True)
        self.out = EqualLinear(c, 1)
        self.embed = EqualLinear(num_classes, c) if num_classes > 0 else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return critic_head(self, self.blocks(self.from_rgb(x)), labels)


def critic_head(net: nn.Module, h: Tensor, labels: Tensor | None) -> Tensor:
    """One logit per sample from the coarsest features ``h``: minibatch stddev, a 3x3 convolution, a
    dense layer, the output layer and, when conditional, the label projection (Miyato & Koyama
    2018) scaled by 1/sqrt(dim) as in StyleGAN2-ADA. The head of the StyleGAN2 and ProGAN critics:
    ``net`` holds ``mbstd_group_size``, ``conv``, ``fc``, ``out`` and ``embed`` (None: unconditional)."""
    if net.mbstd_group_size > 1:
        h = minibatch_stddev(h, net.mbstd_group_size)
    h = net.fc(net.conv(h).flatten(1))
    out = net.out(h).squeeze(1)
    if net.embed is not None:
        if labels is None:
            raise ValueError("this discriminator is class-conditional: pass labels")
        y = net.embed(F.one_hot(labels, net.embed.weight.shape[1]).to(h.dtype))
        out = out + (y * h).sum(1) / math.sqrt(h.shape[1])
    return out
