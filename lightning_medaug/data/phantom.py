"""Procedural 2D/3D phantoms with class labels and segmentation masks.

Each sample is an "organ" (an ellipse in 2D, an ellipsoid in 3D) with smooth texture on a dark
background. The class label ``c`` is the number of bright lesions placed inside the organ, so the
label is visible in the image. The mask is the organ. Two contrasts, ``"mr"`` and ``"ct"``, render
the same anatomy differently, for unpaired translation between domains.

Everything is seeded: the same arguments give the same tensors on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY
from lightning_medaug.data.imageio import Geometry
from lightning_medaug.data.split_module import SplitDataModule
from lightning_medaug.hparams import save_own_hyperparameters
from lightning_medaug.sizes import SizeLike, spatial_size
from lightning_medaug.validation import check_at_least, check_loader_args, check_spatial_dims

__all__ = ["PhantomDataset", "PhantomDataModule", "make_phantoms"]

_STYLES = ("mr", "ct")


def _grid(size: tuple[int, ...], spacing: tuple[float, ...]) -> Tensor:
    """Physical coordinates, shape (spatial_dims, *size): [-1, 1] along the longest extent
    (``size * spacing``), shorter extents in proportion, so an organ stays round in millimetres."""
    extents = [n * s for n, s in zip(size, spacing)]
    axes = [torch.linspace(-1.0, 1.0, n) * extent / max(extents) for n, extent in zip(size, extents)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _smooth_noise(n: int, size: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Low-frequency texture in [-1, 1]: coarse noise upsampled to ``size``."""
    coarse = torch.rand((n, 1) + tuple(max(2, s // 8) for s in size), generator=gen) * 2 - 1
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(coarse, size=size, mode=mode, align_corners=True)


def _spacing(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * spatial_dims
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != spatial_dims or min(spacing) <= 0:
        raise ValueError(f"spacing must be {spatial_dims} positive numbers (one per axis, in the image's axis "
                         f"order), got {list(spacing)}")
    return spacing


def make_phantoms(
    num_samples: int,
    spatial_dims: int = 2,
    image_size: SizeLike = 32,
    num_classes: int = 2,
    seed: int = 0,
    style: str = "mr",
    spacing: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(images, labels, masks)``: float32 (N,1,*S) in [-1,1], int64 (N,), float32 (N,1,*S).

    ``image_size`` is one side or one per axis; ``spacing`` (one per axis, default isotropic) is
    the voxel size the anatomy is drawn at, so anisotropic volumes hold round organs in millimetres.
    """
    check_spatial_dims(spatial_dims)
    shape = spatial_size(image_size, spatial_dims, min_side=8)
    voxel = _spacing(spacing, spatial_dims)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if style not in _STYLES:
        raise ValueError(f"style must be one of {_STYLES}, got {style!r}")
    gen = torch.Generator().manual_seed(seed)
    shape_b = (num_samples, spatial_dims) + (1,) * spatial_dims
    grid = _grid(shape, voxel).unsqueeze(0)  # (1, d, *S)
    center = (torch.rand(shape_b, generator=gen) - 0.5) * 0.3
    radii = 0.45 + torch.rand(shape_b, generator=gen) * 0.3
    organ = (((grid - center) / radii) ** 2).sum(1, keepdim=True) <= 1.0  # (N,1,*S)

    labels = torch.randint(0, num_classes, (num_samples,), generator=gen)
    lesions = torch.zeros_like(organ, dtype=torch.float32)
    for k in range(max(0, num_classes - 1)):
        # Lesion k exists where label > k; placed inside the organ at half its radius.
        offset = (torch.rand(shape_b, generator=gen) * 2 - 1) * radii * 0.5
        size = 0.08 + torch.rand((num_samples,) + (1,) * (spatial_dims + 1), generator=gen) * 0.06
        blob = torch.exp(-(((grid - center - offset) ** 2).sum(1, keepdim=True)) / (2 * size**2))
        present = (labels > k).float().reshape((-1,) + (1,) * (spatial_dims + 1))
        lesions = torch.maximum(lesions, blob * present)

    texture = _smooth_noise(num_samples, shape, gen)
    noise = torch.randn(organ.shape, generator=gen) * 0.03
    tissue = organ.float() * (0.55 + 0.15 * texture)
    if style == "mr":
        intensity = tissue + 0.4 * lesions * organ
    else:  # "ct": brighter background ring, darker organ, lesions hypo-dense
        intensity = 0.25 + 0.5 * organ.float() * (0.3 + 0.1 * texture) - 0.25 * lesions * organ
    images = (intensity + noise).clamp(0.0, 1.0) * 2.0 - 1.0
    return images.float(), labels.long(), organ.float()


class PhantomDataset(Dataset):
    """A fixed set of phantoms as a map-style dataset of ``{"image", "label", "mask"}`` dicts."""

    def __init__(self, num_samples: int, spatial_dims: int = 2, image_size: SizeLike = 32, num_classes: int = 2,
                 seed: int = 0, style: str = "mr", with_masks: bool = True, spacing: Sequence[float] | None = None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.images, self.labels, self.masks = make_phantoms(
            num_samples, spatial_dims, image_size, num_classes, seed, style, spacing
        )
        self.with_masks = with_masks

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = {IMAGE_KEY: self.images[index], LABEL_KEY: self.labels[index]}
        if self.with_masks:
            sample[MASK_KEY] = self.masks[index]
        return sample


class PhantomDataModule(SplitDataModule):
    """Seeded procedural phantoms, 2D or 3D, with labels and masks; needs no files.

    Train, val and test use disjoint seeds, so no sample is shared between splits.

    Args:
        spatial_dims: 2 for images (1, H, W), 3 for volumes (1, D, H, W).
        image_size: side length of every spatial axis, or one per axis ((H, W) or (D, H, W)).
        num_classes: label ``c`` means ``c`` lesions in the organ.
        num_train, num_val, num_test: split sizes.
        batch_size, num_workers: loader settings.
        seed: base seed; splits use ``seed``, ``seed + 1``, ``seed + 2``.
        style: ``"mr"`` or ``"ct"`` contrast.
        with_masks: include the ``"mask"`` entry (off for classification-only data).
        spacing: voxel size per axis (e.g. ``[2.5, 0.8, 0.8]`` mm for thick CT slices); the anatomy
            is drawn in millimetres and :attr:`geometry` reports it, so a bank can record it.
    """

    def __init__(self, spatial_dims: int = 2, image_size: SizeLike = 32, num_classes: int = 2, num_train: int = 256,
                 num_val: int = 64, num_test: int = 64, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 style: str = "mr", with_masks: bool = True, spacing: Sequence[float] | None = None):
        super().__init__()
        check_loader_args(batch_size, num_workers, None)
        # checked here, not first at setup(), so a bad recipe fails when it is built
        check_at_least(1, num_train=num_train, num_val=num_val, num_test=num_test)
        make_phantoms(1, spatial_dims, image_size, num_classes, seed, style, spacing)  # validates the arguments
        save_own_hyperparameters(self)
        size = spatial_size(image_size, spatial_dims, min_side=8)
        self.spatial_dims, self.num_classes = spatial_dims, num_classes
        # the size as given (an int, or a recipe's list stays a list), so it compares equal to the
        # image_size a generator records from the same recipe
        self.image_size = image_size if isinstance(image_size, int | list) else size
        self.in_channels = 1
        self._spacing = _spacing(spacing, spatial_dims)

    @property
    def image_geometry(self) -> Geometry:
        """Where the phantoms lie: ``spacing`` (default 1), origin 0, identity direction; SimpleITK's
        (x, y[, z]) order, the reverse of the array axes."""
        return Geometry.grid(spatial_size(self.image_size, self.spatial_dims, min_side=8),
                             tuple(reversed(self._spacing)))

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for offset, split in enumerate(("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = PhantomDataset(
                    hp[f"num_{split}"], hp.spatial_dims, hp.image_size, hp.num_classes, hp.seed * 1000 + offset,
                    hp.style, hp.with_masks, hp.spacing
                )
