"""Image (+ mask) folders of any format SimpleITK reads, as a LightningDataModule.

Layout::

    root/image/<stem>.<ext>      NIfTI (.nii/.nii.gz), MHA/MHD, NRRD, PNG/JPEG/TIFF, a single .dcm,
                                 or a sub-folder <stem>/ holding one DICOM series (= one volume)
    root/label/<stem>.<ext>      optional masks, paired with images by stem

Every file is read once in ``setup()`` and kept as tensors (these data sets are small). The
geometry of each image (spacing, origin, direction) is kept in a side table, never in batches, so
predictions can be written back in the image's physical space with :meth:`FolderDataModule.write_like`.
Only geometry is ever copied: DICOM tags (patient name, UIDs, ...) are not read into, nor written to,
anything this module produces.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import optional_import
from torch import Tensor
from torch.utils.data import Dataset

from lightning_medaug.data.batch import IMAGE_KEY, LABEL_KEY, MASK_KEY
from lightning_medaug.data.imageio import (
    IMAGE_SUFFIXES,
    Geometry,
    image_to_array,
    read_image,
    rescale_intensity,
    resize,
    scan_folder,
)
from lightning_medaug.data.medmnist import DATA_ENV_VAR, shipped_datasets_dir
from lightning_medaug.data.split_module import SplitDataModule
from lightning_medaug.data.splits import check_subset, holdout_split, stratified_subset
from lightning_medaug.hparams import save_own_hyperparameters
from lightning_medaug.validation import check_loader_args

# Optional at import: only file I/O needs SimpleITK; without it the generators and mixing still work and
# reading or writing a file raises an error that names the missing package.
sitk, _ = optional_import("SimpleITK")

__all__ = ["Geometry", "FolderDataset", "FolderDataModule", "read_image"]

class FolderDataset(Dataset):
    """Samples ``indices`` of stacked tensors, as ``{"image", "mask"?, "label"?}`` dicts."""

    def __init__(self, tensors: dict[str, Tensor], indices: Sequence[int],
                 transform: Callable[[dict], dict] | None = None):
        self.tensors, self.indices, self.transform = tensors, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = self.indices[index]
        if self.transform is None:
            return {key: value[i] for key, value in self.tensors.items()}
        # Clone so that a transform working in place can never alter the cached data.
        return self.transform({key: value[i].clone() for key, value in self.tensors.items()})


class FolderDataModule(SplitDataModule):
    """Image (+ mask, + label) folders read with SimpleITK; 2D or 3D inferred from the files.

    Images are rescaled per image to [-1, 1] by clipping to the ``intensity_percentiles`` (robust
    to the outliers of CT/MR; ``(0, 100)`` is plain min-max). Masks become {0, 1} float by
    ``value > mask_threshold * max``. There is no official test split in most such data: samples
    are held out by index (in natural order of the stems) or by seeded fraction.

    Args:
        root: data folder; ``None`` means ``$MEDAUG_DATA/isbi2012-em`` if ``MEDAUG_DATA`` is set,
            else the shipped ISBI 2012 EM copy (30 images of 512x512 with membrane masks).
        image_dir, mask_dir: sub-folders of ``root``; ``mask_dir=None`` for images only.
        spatial_dims: 2 or 3; ``None`` infers it from the files.
        image_size: resize every image to this side length, or to one size per axis ((H, W) or
            (D, H, W), for non-square and non-cubic grids) (bilinear; masks nearest).
        mask_threshold: fraction of a mask's maximum above which a voxel is foreground.
        intensity_percentiles: (low, high) percentiles mapped to -1 and 1.
        val_indices, test_indices: samples to hold out; override the fractions.
        val_fraction, test_fraction: share held out at random (``None``: 0.2 unless indices given).
        split_seed: seed of the fraction hold-out.
        label_from: CSV with ``stem,label`` columns (relative paths are read from ``root``).
        batch_size, num_workers, pin_memory: loader settings (``pin_memory=None``: if CUDA exists).
        train_transforms: callable on each training sample dict (e.g. :func:`classic_augmentation`).
        subset, subset_seed: keep a seeded subset of the training split (after the hold-out): a
            fraction in (0, 1] or a count per class (class-stratified when ``label_from`` is set);
            ``subset_indices`` then holds the kept sample indices.
    """

    def __init__(self, root: str | None = None, image_dir: str = "image", mask_dir: str | None = "label",
                 spatial_dims: int | None = None, image_size: int | Sequence[int] | None = None,
                 mask_threshold: float = 0.5,
                 intensity_percentiles: tuple[float, float] = (0.5, 99.5),
                 val_indices: Sequence[int] | None = None, test_indices: Sequence[int] | None = None,
                 val_fraction: float | None = None, test_fraction: float | None = None, split_seed: int = 0,
                 label_from: str | None = None, batch_size: int = 8, num_workers: int = 0,
                 train_transforms: Callable[[dict], dict] | None = None, pin_memory: bool | None = None,
                 subset: float | None = None, subset_seed: int = 0):
        super().__init__()
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None (infer), got {spatial_dims}")
        if image_size is not None:
            sides = [image_size] if isinstance(image_size, int) else list(image_size)
            if not sides or any(isinstance(s, bool) or not isinstance(s, int) or s < 4 for s in sides) \
                    or (spatial_dims is not None and len(sides) not in (1, spatial_dims)) or len(sides) > 3:
                raise ValueError(f"image_size must be one side or one per axis, each at least 4 (or None to keep "
                                 f"the files' size), got {image_size!r}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        lo, hi = intensity_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"intensity_percentiles must be (low, high), 0 <= low < high <= 100, got {(lo, hi)}")
        for name, frac, given in (("val", val_fraction, val_indices), ("test", test_fraction, test_indices)):
            if frac is not None and given is not None:
                raise ValueError(f"pass either {name}_indices or {name}_fraction, not both")
            if frac is not None and not 0.0 <= frac < 1.0:
                raise ValueError(f"{name}_fraction must be in [0, 1), got {frac}")
        subset = check_subset(subset)
        check_loader_args(batch_size, num_workers, train_transforms)
        save_own_hyperparameters(self, ignore=["train_transforms"])
        env = os.environ.get(DATA_ENV_VAR)
        default = Path(env).expanduser() / "isbi2012-em" if env else shipped_datasets_dir() / "isbi2012_em"
        self.root = Path(root).expanduser() if root else default
        self.spatial_dims, self.image_size = spatial_dims, image_size
        self.in_channels: int | None = None
        self.num_classes: int | None = 2 if mask_dir else None
        self.class_names: tuple[str, ...] | None = ("background", "foreground") if mask_dir else None
        self.train_transforms = train_transforms
        self.pin_memory = pin_memory
        self.stems: list[str] = []
        self.files: list[tuple[Path, Path | None]] = []
        self.geometry: list[Geometry] = []
        self.tensors: dict[str, Tensor] = {}
        self.split_indices: dict[str, list[int]] = {}
        self.subset_indices: np.ndarray | None = None

    # -- reading -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Read every file once, check pairs, shapes and geometry, and build the splits."""
        if self.datasets:
            return
        hp = self.hparams
        self.spatial_dims, self.geometry = hp.spatial_dims, []
        if not self.root.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.root} (pass root= or set ${DATA_ENV_VAR})")
        images = scan_folder(self.root / hp.image_dir)
        if not images:
            raise FileNotFoundError(f"no images in {self.root / hp.image_dir}: expected files ending in "
                                    f"{', '.join(IMAGE_SUFFIXES)} or DICOM series folders")
        masks = scan_folder(self.root / hp.mask_dir) if hp.mask_dir else {}
        if hp.mask_dir:
            _check_partners(images, masks, "image", "mask")
            _check_partners(masks, images, "mask", "image")
        labels = self._read_labels(list(images)) if hp.label_from else None
        self.stems = list(images)
        self.files = [(images[s], masks.get(s)) for s in self.stems]
        pixels, mask_list = [], []
        for image_path, mask_path in self.files:
            image, mask = self._read_pair(image_path, mask_path)
            pixels.append(image)
            if mask is not None:
                mask_list.append(mask)
        self.tensors = {IMAGE_KEY: self._stack(pixels, "images")}
        if mask_list:
            self.tensors[MASK_KEY] = self._stack(mask_list, "masks")
        if labels is not None:
            self.tensors[LABEL_KEY] = labels
        shape = tuple(self.tensors[IMAGE_KEY].shape[2:])
        self.in_channels = int(self.tensors[IMAGE_KEY].shape[1])
        self.image_size = shape[0] if len(set(shape)) == 1 else shape
        self.split_indices = holdout_split(
            len(self.stems), hp.val_indices, hp.test_indices, _fraction(hp.val_indices, hp.val_fraction),
            _fraction(hp.test_indices, hp.test_fraction), hp.split_seed)
        if hp.subset is not None:
            train = np.asarray(self.split_indices["train"])
            keys = labels[train].numpy() if labels is not None else np.zeros(len(train), dtype=np.int64)
            self.subset_indices = train[stratified_subset(keys, hp.subset, hp.subset_seed)]
            self.split_indices["train"] = self.subset_indices.tolist()
        for split, indices in self.split_indices.items():
            transform = self.train_transforms if split == "train" else None
            self.datasets[split] = FolderDataset(self.tensors, indices, transform)

    @property
    def image_geometry(self) -> Geometry:
        """Where the training images lie, for a bank that imitates them: the first training image's
        spacing, origin and direction, in SimpleITK (x, y[, z]) order (the reverse of the array
        axes), on the grid the images are served at (``image_size``: same field of view, see
        :meth:`Geometry.resized`). Warns when other training images differ in spacing or direction."""
        if not self.datasets:
            raise ValueError("image_geometry is read from the image files: call setup() first")
        shape = tuple(self.tensors[IMAGE_KEY].shape[2:])
        train = self.split_indices["train"] or list(range(len(self.geometry)))
        reference = self.geometry[train[0]].resized(shape)
        differ = [self.stems[i] for i in train[1:] if not _same_spacing(reference, self.geometry[i].resized(shape))]
        if differ:
            warnings.warn(f"{len(differ)} training image(s) differ from {self.stems[train[0]]} in spacing or "
                          f"direction (e.g. {differ[:3]}); image_geometry describes {self.stems[train[0]]} only: "
                          "resample the images to one spacing for a bank that matches them all", stacklevel=2)
        return reference

    def _read_pair(self, image_path: Path, mask_path: Path | None) -> tuple[Tensor, Tensor | None]:
        hp = self.hparams
        image = read_image(image_path)
        arr = image_to_array(image, image_path, self.spatial_dims)
        if self.spatial_dims is None:
            self.spatial_dims = arr.ndim - 1
        geometry = Geometry.of(image)
        self.geometry.append(geometry)
        x = resize(torch.from_numpy(rescale_intensity(arr, tuple(hp.intensity_percentiles))), hp.image_size, False)
        if mask_path is None:
            return x, None
        mask_image = read_image(mask_path)
        if mask_image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"mask {mask_path} has {mask_image.GetNumberOfComponentsPerPixel()} channels, expected 1; "
                             "save it as a one-channel label image")
        m = image_to_array(mask_image, mask_path, self.spatial_dims)
        if m.shape[1:] != arr.shape[1:]:
            raise ValueError(f"image {image_path} has spatial shape {arr.shape[1:]} but mask {mask_path} "
                             f"has {m.shape[1:]}")
        if not geometry.matches(Geometry.of(mask_image)):
            other = Geometry.of(mask_image)
            raise ValueError(f"image {image_path} and mask {mask_path} differ in geometry: spacing {geometry.spacing} "
                             f"vs {other.spacing}, origin {geometry.origin} vs {other.origin}; resample the mask")
        top = m.max()
        binary = (m > hp.mask_threshold * top) if top > 0 else np.zeros_like(m, dtype=bool)
        return x, resize(torch.from_numpy(binary.astype(np.float32)), hp.image_size, True)

    def _stack(self, tensors: list[Tensor], what: str) -> Tensor:
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"{what} under {self.root} differ in shape {sorted(shapes)[:4]}; pass image_size= "
                             "to resize them to one size")
        return torch.stack(tensors)

    def _read_labels(self, stems: list[str]) -> Tensor:
        path = Path(self.hparams.label_from).expanduser()
        path = path if path.is_absolute() or path.is_file() else self.root / path
        if not path.is_file():
            raise FileNotFoundError(f"label file not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"stem", "label"} <= set(rows[0]):
            raise ValueError(f"{path} must be a CSV with a header row holding 'stem' and 'label' columns")
        table = {row["stem"].strip(): row["label"].strip() for row in rows}
        absent = [s for s in stems if s not in table]
        if absent:
            raise ValueError(f"{path} has no label for {absent[:5]}{' ...' if len(absent) > 5 else ''}; add a "
                             "stem,label row for each")
        values = [table[s] for s in stems]
        if all(re.fullmatch(r"\d+", v) for v in table.values()):
            ints = [int(v) for v in values]
            self.num_classes = max(int(v) for v in table.values()) + 1
            self.class_names = tuple(str(i) for i in range(self.num_classes))
        else:  # class names: indices follow their sorted order
            self.class_names = tuple(sorted(set(table.values())))
            self.num_classes = len(self.class_names)
            ints = [self.class_names.index(v) for v in values]
        return torch.tensor(ints, dtype=torch.int64)

    # -- writing -----------------------------------------------------------------------------
    def write_like(self, tensor: Tensor, reference: int | Geometry, path: str | Path, mode: str = "nearest") -> Path:
        """Write ``tensor`` ((C,)*S) to ``path`` with the geometry of sample ``reference``.

        A tensor at the resized grid (``image_size``) is first resampled back to the reference
        grid (``mode="nearest"`` for masks, ``"linear"`` for images). Only spacing, origin and
        direction are copied; no metadata of the source file is.
        """
        if mode not in ("nearest", "linear"):
            raise ValueError(f"mode must be 'nearest' or 'linear', got {mode!r}")
        if isinstance(reference, Geometry):
            geometry = reference
        else:
            if not self.geometry:
                raise ValueError("call setup() before write_like with a sample index")
            if not -len(self.geometry) <= reference < len(self.geometry):
                raise ValueError(f"reference index {reference} outside the {len(self.geometry)} samples")
            geometry = self.geometry[reference]
        sd = self.spatial_dims or len(geometry.shape)
        x = tensor.detach().cpu()
        x = x[None] if x.ndim == sd else x
        if x.ndim != sd + 1:
            raise ValueError(f"tensor of shape {tuple(tensor.shape)} is not (C, *S) or *S for {sd}D data")
        target = geometry.shape[-sd:]
        if tuple(x.shape[1:]) != target:
            interp = "nearest-exact" if mode == "nearest" else ("bilinear" if sd == 2 else "trilinear")
            x = F.interpolate(x[None].float(), size=target, mode=interp)[0].to(x.dtype)
        arr = x.numpy()
        arr = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr
        arr = arr.astype(np.int32) if arr.dtype == np.int64 else arr
        arr = arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr
        arr = arr.reshape(arr.shape[:1] + geometry.shape)  # restores a squeezed one-slice axis
        channels = arr.shape[0]
        image = sitk.GetImageFromArray(arr[0] if channels == 1 else np.moveaxis(arr, 0, -1), isVector=channels > 1)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            sitk.WriteImage(geometry.apply(image), str(path), useCompression=True)
        except RuntimeError as err:  # e.g. float data into PNG
            raise ValueError(f"cannot write {arr.dtype} data to {path} ({str(err).strip().splitlines()[-1]}); cast the "
                             "tensor (e.g. mask.to(torch.uint8)) or write .nii.gz/.mha") from None
        return path


def _same_spacing(a: Geometry, b: Geometry) -> bool:
    # origins differ between patients; spacing and direction make images alike
    return np.allclose(a.spacing, b.spacing, rtol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-4)


def _fraction(indices: Sequence[int] | None, fraction: float | None) -> float:
    """Hold-out fraction: none when indices are given, 0.2 when neither is."""
    if indices is not None:
        return 0.0
    return 0.2 if fraction is None else fraction


def _check_partners(found: dict[str, Path], partners: dict[str, Path], kind: str, partner: str) -> None:
    lonely = [found[s] for s in found if s not in partners]
    if lonely:
        names = ", ".join(str(p) for p in lonely[:3]) + (" ..." if len(lonely) > 3 else "")
        raise ValueError(f"{len(lonely)} {kind}(s) without a matching {partner} (same stem): {names}; "
                         f"add the {partner}(s) or remove the {kind}(s)")

