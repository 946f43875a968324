"""The small fully-convolutional denoiser of SinDDM, for 2D and 3D alike.

Kulikov, Yadin, Kleiner & Michaeli 2023, "SinDDM: A Single Image Denoising Diffusion Model"
(ICML), Sec. 3.2: a stack of ConvNeXt-like blocks with no down-sampling and no attention, so the
receptive field is small and fixed. One network serves every scale of the pyramid; it learns the
statistics of *patches* of one image (not the whole image) because it never sees more than its
receptive field at a time. The timestep and the scale index enter through one embedding that is
added after each block's depthwise convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding, zero_module
from torch import Tensor, nn

__all__ = ["ScaleTimeBlock", "SinDDMDenoiser"]


class ScaleTimeBlock(nn.Module):
    """Depthwise conv -> + embedding -> conv, GELU, conv -> + residual (SinDDM's conv block).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels in and out.
        emb_channels: size of the (timestep, scale) embedding.
        depthwise_kernel_size: kernel of the depthwise convolution (5 in the paper).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, emb_channels: int,
                 depthwise_kernel_size: int = 5):
        super().__init__()
        self.depthwise = Convolution(spatial_dims, in_channels, in_channels, kernel_size=depthwise_kernel_size,
                                     groups=in_channels, conv_only=True)
        self.emb_proj = nn.Sequential(nn.GELU(), nn.Linear(emb_channels, in_channels))
        self.body = nn.Sequential(
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, conv_only=True),
            nn.GELU(),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, conv_only=True),
        )
        self.skip = (nn.Identity() if in_channels == out_channels
                     else Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        cond = self.emb_proj(emb)
        # broadcast (N, C) over every spatial axis, whatever their number
        h = self.depthwise(x) + cond.reshape(cond.shape + (1,) * (x.ndim - 2))
        return self.body(h) + self.skip(x)


class SinDDMDenoiser(nn.Module):
    """``eps_theta(x_t, t, s)``: predicts the noise of ``x_t`` at timestep ``t`` and pyramid scale ``s``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (input and output).
        channels: output channels of each block; ``len(channels)`` blocks (the paper uses
            ``(dim / 2, dim, dim, dim / 2)`` with ``dim = 64``).
        depthwise_kernel_size: kernel of each block's depthwise convolution (odd).
        emb_channels: size of the timestep and scale embeddings (32 in the paper).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int],
                 depthwise_kernel_size: int = 5, emb_channels: int = 32):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive integers, got {channels}")
        if depthwise_kernel_size < 1 or depthwise_kernel_size % 2 == 0:
            raise ValueError(f"depthwise_kernel_size must be odd and positive (same padding), got "
                             f"{depthwise_kernel_size}")
        if emb_channels < 2 or emb_channels % 2:
            raise ValueError(f"emb_channels must be even and at least 2 (sin and cos halves), got {emb_channels}")
        self.emb_channels = emb_channels
        self.depthwise_kernel_size = depthwise_kernel_size
        self.num_blocks = len(channels)
        # timestep and scale embedded separately, then mixed by an MLP (the paper's "multiscale" embedding)
        self.emb_mlp = nn.Sequential(nn.Linear(2 * emb_channels, 4 * emb_channels), nn.GELU(),
                                     nn.Linear(4 * emb_channels, emb_channels))
        ins = (in_channels,) + channels[:-1]
        self.blocks = nn.ModuleList(
            ScaleTimeBlock(spatial_dims, i, o, emb_channels, depthwise_kernel_size) for i, o in zip(ins, channels)
        )
        # zero-initialised output: the first prediction is 0, so training starts at loss E[eps^2] = 1
        self.out = zero_module(Convolution(spatial_dims, channels[-1], in_channels, kernel_size=1, conv_only=True))

    @property
    def receptive_field(self) -> int:
        """Side length (pixels) of the input region that one output pixel sees."""
        # per block: depthwise conv (k - 1) + two 3x3 convolutions (2 + 2)
        return 1 + self.num_blocks * (self.depthwise_kernel_size - 1 + 4)

    def forward(self, x: Tensor, timesteps: Tensor, scales: Tensor) -> Tensor:
        """Predict the noise of ``x`` (N, C, *S) at integer ``timesteps`` (N,) and scale indices ``scales`` (N,)."""
        emb = self.emb_mlp(
            torch.cat([get_timestep_embedding(timesteps, self.emb_channels),
                       get_timestep_embedding(scales, self.emb_channels)], dim=1).to(x.dtype)
        )
        h = x
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
