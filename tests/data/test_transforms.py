"""classic_augmentation: shapes, dtypes and ranges kept, masks aligned, seeded."""

import pytest
import torch

from lightning_medaug.data.phantom import make_phantoms
from lightning_medaug.data.transforms import ClassicAugmentation, classic_augmentation


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 12)])
def test_shapes_dtypes_ranges_and_change(spatial_dims, size):
    images, labels, masks = make_phantoms(4, spatial_dims, size, seed=1)
    aug = classic_augmentation(spatial_dims, seed=0, affine_prob=1.0, noise_prob=1.0)
    changed = 0
    for i in range(4):
        out = aug({"image": images[i], "mask": masks[i], "label": labels[i]})
        assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor  # not MetaTensor
        assert out["image"].shape == images[i].shape and out["mask"].shape == masks[i].shape
        assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.float32
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
        # contrast and noise keep the organ under its moved mask bright against the background
        inside = out["mask"].bool()
        assert out["image"][inside].mean() > out["image"][~inside].mean() + 0.5
        assert torch.equal(out["label"], labels[i])
        changed += not torch.allclose(out["image"], images[i])
    assert changed == 4


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 12)])
def test_mask_stays_aligned_with_image(spatial_dims, size):
    _, _, masks = make_phantoms(6, spatial_dims, size, seed=2)
    aug = classic_augmentation(spatial_dims, seed=5, affine_prob=1.0, contrast_prob=0.0, noise_prob=0.0,
                               rotate_degrees=20.0, translate=0.1)
    moved = 0
    for mask in masks:
        out = aug({"image": mask * 2 - 1, "mask": mask})
        agreement = ((out["image"] > 0).float() == out["mask"]).float().mean()
        assert agreement > 0.98  # only interpolation at the boundary may differ (bilinear vs nearest)
        moved += (out["mask"] != mask).float().mean() > 0.02
    assert moved >= 5  # the spatial transform really moved the masks, and the images with them


def test_seeded_and_image_only():
    images, _, _ = make_phantoms(3, 2, 16, seed=0)
    def run(seed):
        aug = classic_augmentation(2, seed=seed, affine_prob=1.0)
        return [aug({"image": x})["image"] for x in images]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.allclose(a, b) for a, b in zip(first, other))
    with pytest.raises(ValueError, match="spatial dims"):
        ClassicAugmentation(3)({"image": images[0]})
    for kwargs in ({"spatial_dims": 1}, {"flip_prob": 2.0}, {"flip_axes": (2,)}, {"gamma": (0.0, 1.0)}):
        with pytest.raises(ValueError):
            ClassicAugmentation(**kwargs)


def test_dataloader_workers_draw_different_transforms():
    image = make_phantoms(1, 2, 16, seed=0)[0][0]

    class Same(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"image": image.clone()}

    class Augmented(Same):
        aug = classic_augmentation(2, seed=0, affine_prob=1.0, noise_prob=1.0)

        def __getitem__(self, index):
            return self.aug(super().__getitem__(index))

    loader = torch.utils.data.DataLoader(Augmented(), batch_size=1, num_workers=2)
    first_of_each_worker = list(loader)[:2]  # samples 0 and 1 come from workers 0 and 1
    assert not torch.allclose(first_of_each_worker[0]["image"], first_of_each_worker[1]["image"])


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, (12, 10, 8))])
def test_grid_distortion_warps_image_and_mask_together(spatial_dims, size):
    import numpy as np

    shape = (size,) * spatial_dims if isinstance(size, int) else size
    rng = np.random.default_rng(0)
    masks = [torch.from_numpy((rng.random((1, *shape)) > 0.5).astype("float32")) for _ in range(4)]
    only_distort = {"flip_prob": 0.0, "affine_prob": 0.0, "contrast_prob": 0.0, "noise_prob": 0.0}
    aug = classic_augmentation(spatial_dims, seed=3, distort_prob=1.0, distort_limit=0.3, **only_distort)
    for mask in masks:
        out = aug({"image": mask * 2 - 1, "mask": mask})
        assert out["mask"].shape == mask.shape and set(out["mask"].unique().tolist()) <= {0.0, 1.0}
        assert (out["mask"] != mask).float().mean() > 0.05  # the warp moved the mask...
        assert ((out["image"] > 0).float() == out["mask"]).float().mean() > 0.9  # ...and the image with it
    # off by default: without it, nothing moves
    plain = classic_augmentation(spatial_dims, seed=3, **only_distort)
    assert all(torch.equal(plain({"image": m * 2 - 1})["image"], m * 2 - 1) for m in masks)
    with pytest.raises(ValueError, match="distort"):
        ClassicAugmentation(distort_limit=1.5)
