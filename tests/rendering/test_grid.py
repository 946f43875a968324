"""Sample grids for 2D, 3D, grey and RGB images, with captions and titles."""

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_medaug.rendering import make_grid_array, save_image_grid, volume_to_planes


def test_grey_2d_values_and_layout():
    images = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0), torch.zeros(1, 4, 4)])
    grid = make_grid_array(images, nrow=3, padding=1)
    assert grid.dtype == np.uint8 and grid.shape == (4 + 2, 3 * 5 + 1, 3)
    assert (grid[1:5, 1:5] == 0).all()  # -1 -> black
    assert (grid[1:5, 6:10] == 255).all()  # +1 -> white
    assert (grid[1:5, 11:15] == 128).all()  # 0 -> mid grey
    assert (grid[:, 0] == 255).all()  # white padding between tiles
    assert make_grid_array(images).shape == (2 * 6 + 2, 2 * 6 + 2, 3)  # default: ceil(sqrt(3)) = 2 per row


def test_rgb_keeps_colours():
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 5, 5)
    grid = make_grid_array(red, nrow=2, padding=0)
    assert grid.shape == (5, 10, 3) and (grid[..., 0] == 255).all() and (grid[..., 1:] == 0).all()


def test_3d_shows_three_central_planes():
    vol = -torch.ones(1, 1, 4, 6, 8)
    vol[0, 0, 2] = 1.0  # the central axial slice is bright
    planes = volume_to_planes(vol)
    # axial (H=6, W=8), coronal (D=4, W=8), sagittal (D=4, H=6), padded to height 6, 1 px white gaps
    assert planes.shape == (1, 1, 6, 8 + 1 + 8 + 1 + 6)
    assert (planes[0, 0, :, :8] == 1).all()
    assert (planes[0, 0, 2, 9:17] == 1).all() and (planes[0, 0, 0, 9:17] == -1).all()  # row d=2 of the coronal plane
    assert (planes[0, 0, 4:, 9:17] == -1).all()  # padding below the 4-row planes is black
    grid = make_grid_array(torch.rand(4, 1, 8, 8, 8) * 2 - 1, nrow=2, padding=2)
    assert grid.shape == (2 * 10 + 2, 2 * (3 * 8 + 2 + 2) + 2, 3)


def test_captions_title_scale_and_png(tmp_path):
    images = torch.zeros(4, 1, 8, 8)
    plain = make_grid_array(images, nrow=2, scale=3)
    assert plain.shape == (2 * 26 + 2, 2 * 26 + 2, 3)
    captioned = make_grid_array(images, nrow=2, scale=3, labels=["normal", "pneumonia", 0, 1], title="epoch 3")
    assert captioned.shape == (16 + 2 * (26 + 12) + 2, 2 * 26 + 2, 3)
    assert (captioned[18:30, 2:26, 0] > 200).any()  # caption text is drawn on the black strip
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=2, labels=torch.arange(4), title="t", scale=3)
    with Image.open(path) as png:
        assert png.size == (captioned.shape[1], captioned.shape[0]) and png.mode == "RGB"


def test_other_channel_counts_show_the_first_channel():
    images = torch.stack([torch.stack([torch.ones(4, 4), -torch.ones(4, 4)])])  # (1, 2, 4, 4)
    assert (make_grid_array(images, padding=0) == 255).all()


@pytest.mark.parametrize("images, kwargs, match", [
    (torch.zeros(2, 8, 8), {}, "images must be"),
    (torch.zeros(0, 1, 8, 8), {}, "empty"),
    (torch.zeros(2, 1, 8, 8), {"labels": ["a"]}, "got 1 labels for 2 images"),
    (torch.zeros(2, 1, 8, 8), {"scale": 0}, "scale must be"),
])
def test_bad_arguments(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_grid_array(images, **kwargs)
