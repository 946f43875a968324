"""Sample grids: a batch of 2D images or 3D volumes in [-1, 1] as one picture.

3D volumes are shown as their three central orthogonal slices side by side (axial ``[:, d/2]``,
coronal ``[:, :, h/2]``, sagittal ``[:, :, :, w/2]``), so one tile shows the whole volume's shape.
Images with one channel are grey, with three channels RGB; other channel counts show the first
channel. :func:`make_grid_array` returns the picture as a uint8 array (for wandb and HTML reports),
:func:`save_image_grid` writes it as a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from lightning_medaug.data.batch import to_unit_range

__all__ = ["make_grid_array", "save_image_grid", "volume_to_planes"]

_CAPTION_HEIGHT = 12  # pixels of the strip holding each tile's caption (PIL's default font is 11 px)
_TITLE_HEIGHT = 16


def volume_to_planes(volumes: Tensor, gap: int = 1) -> Tensor:
    """(N, C, D, H, W) -> (N, C, max(H, D), W + W + H + 2 gap): the three central slices, side by side.

    Shorter planes are padded with black (-1) at the bottom; ``gap`` white (+1) columns separate them.
    """
    if volumes.ndim != 5:
        raise ValueError(f"expected volumes of shape (N, C, D, H, W), got {tuple(volumes.shape)}")
    d, h, w = volumes.shape[2:]
    planes = [volumes[:, :, d // 2], volumes[:, :, :, h // 2], volumes[:, :, :, :, w // 2]]  # (H,W), (D,W), (D,H)
    height = max(p.shape[2] for p in planes)
    separator = volumes.new_ones(volumes.shape[:2] + (height, gap))
    parts: list[Tensor] = []
    for plane in planes:
        if parts:
            parts.append(separator)
        parts.append(torch.nn.functional.pad(plane, (0, 0, 0, height - plane.shape[2]), value=-1.0))
    return torch.cat(parts, dim=-1)


def _to_rgb_tiles(images: Tensor) -> Tensor:
    """Images (N, C, H, W) or (N, C, D, H, W) in [-1, 1] -> float (N, 3, H', W') in [0, 1]."""
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: pass at least one image")
    images = images.detach().float().cpu()
    if images.ndim == 5:
        images = volume_to_planes(images)
    images = images if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
    return to_unit_range(images)


def make_grid_array(images: Tensor, nrow: int | None = None, labels: Sequence | Tensor | None = None,
                    title: str | None = None, scale: int = 1, padding: int = 2) -> np.ndarray:
    """The grid as a uint8 array (height, width, 3).

    Args:
        images: (N, C, H, W) or (N, C, D, H, W) in [-1, 1].
        nrow: tiles per row; defaults to ``ceil(sqrt(N))``.
        labels: optional caption per image (class names or indices), drawn above each tile.
        title: optional title drawn above the grid.
        scale: integer nearest-neighbour magnification of each tile (small images stay legible).
        padding: pixels between tiles.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    tiles = _to_rgb_tiles(images)
    n = tiles.shape[0]
    if labels is not None:
        labels = [str(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} images")
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    if scale > 1:
        tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    if labels is not None:  # a black caption strip on top of every tile
        tiles = torch.nn.functional.pad(tiles, (0, 0, _CAPTION_HEIGHT, 0), value=0.0)
    grid = make_grid(tiles, nrow=nrow, padding=padding, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    if labels is None and title is None:
        return array
    canvas = Image.fromarray(array)
    if title is not None:
        framed = Image.new("RGB", (canvas.width, canvas.height + _TITLE_HEIGHT), (255, 255, 255))
        framed.paste(canvas, (0, _TITLE_HEIGHT))
        canvas = framed
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    top = _TITLE_HEIGHT if title is not None else 0
    if title is not None:
        draw.text((padding, 2), title, fill=(0, 0, 0), font=font)
    if labels is not None:
        tile_h, tile_w = tiles.shape[2] + padding, tiles.shape[3] + padding
        for i, label in enumerate(labels):
            row, col = divmod(i, nrow)
            draw.text((col * tile_w + padding + 1, top + row * tile_h + padding), label, fill=(255, 255, 0), font=font)
    return np.asarray(canvas)


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None,
                    labels: Sequence | Tensor | None = None, title: str | None = None, scale: int = 1) -> Path:
    """Write :func:`make_grid_array` of ``images`` as a PNG at ``path`` (folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid_array(images, nrow=nrow, labels=labels, title=title, scale=scale)).save(path)
    return path
