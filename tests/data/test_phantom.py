"""PhantomDataModule and make_phantoms: shapes, seeds, splits, visible labels, argument checks."""

import pytest
import torch

from lightning_medaug.data.phantom import PhantomDataModule, make_phantoms


@pytest.mark.parametrize("spatial_dims, size", [(2, 16), (3, 8)])
def test_shapes_and_batches(spatial_dims, size):
    dm = PhantomDataModule(spatial_dims=spatial_dims, image_size=size, num_classes=3, num_train=6, num_val=4,
                           num_test=2, batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    spatial = (size,) * spatial_dims
    assert batch["image"].shape == (4, 1, *spatial) and batch["mask"].shape == (4, 1, *spatial)
    assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    # each image comes with its own mask: the organ it marks is bright on a black background
    image, mask = batch["image"].flatten(1), batch["mask"].flatten(1)
    inside, outside = (image * mask).sum(1) / mask.sum(1), (image * (1 - mask)).sum(1) / (1 - mask).sum(1)
    assert (inside > outside + 0.5).all() and (outside < -0.9).all()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [6, 4, 2]
    assert len(dm.predict_dataloader().dataset) == 2


def test_seeded_and_splits_differ():
    a = make_phantoms(5, 2, 16, num_classes=3, seed=7)
    b = make_phantoms(5, 2, 16, num_classes=3, seed=7)
    c = make_phantoms(5, 2, 16, num_classes=3, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    dm = PhantomDataModule(image_size=16, num_train=5, num_val=5, num_test=5)
    dm.setup()
    train, val, test = (dm.datasets[s].images for s in ("train", "val", "test"))
    assert not torch.equal(train, val) and not torch.equal(val, test) and not torch.equal(train, test)


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_label_is_visible_in_mr(spatial_dims, size):
    images, labels, masks = make_phantoms(60, spatial_dims, size, num_classes=3, seed=0, style="mr")
    inside = (images * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    means = [inside[labels == c].mean() for c in range(3)]
    assert all((labels == c).sum() > 5 for c in range(3))
    assert means[0] < means[1] < means[2]


def test_ct_style_differs_and_bad_arguments():
    mr, _, mask_mr = make_phantoms(4, 2, 16, seed=1, style="mr")
    ct, _, mask_ct = make_phantoms(4, 2, 16, seed=1, style="ct")
    assert torch.equal(mask_mr, mask_ct) and not torch.allclose(mr, ct)
    bad = [{"spatial_dims": 1}, {"image_size": 4}, {"num_classes": 0}, {"style": "xray"}, {"batch_size": 0},
           {"num_train": 0}, {"num_val": -1}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            PhantomDataModule(**kwargs)
