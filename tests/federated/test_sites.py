"""Site splits: seeded, disjoint, covering, each site non-empty; skew where asked; mismatched sites refused."""

import numpy as np
import pytest

from lightning_medaug.data import PhantomDataModule
from lightning_medaug.federated import SiteDataModule, check_sites, site_indices, site_summary

LABELS = np.repeat([0, 1], [300, 100])


@pytest.mark.parametrize("split", ["iid", "label_skew", "quantity_skew"])
def test_split_is_a_seeded_partition(split):
    parts = site_indices(LABELS, 5, split, alpha=0.3, seed=1)
    joined = np.concatenate(parts)
    assert len(parts) == 5 and min(len(p) for p in parts) >= 1
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))  # disjoint and covering
    again = site_indices(LABELS, 5, split, alpha=0.3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = site_indices(LABELS, 5, split, alpha=0.3, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_keeps_sizes_and_class_mix_even():
    parts = site_indices(LABELS, 4, "iid")
    assert {len(p) for p in parts} == {100}
    shares = [LABELS[p].mean() for p in parts]
    assert max(shares) - min(shares) < 0.2


def test_label_skew_skews_classes_and_quantity_skew_sizes():
    skew = site_indices(LABELS, 3, "label_skew", alpha=0.1, seed=0)
    assert max(LABELS[p].mean() for p in skew) - min(LABELS[p].mean() for p in skew) > 0.5
    sizes = [len(p) for p in site_indices(LABELS, 3, "quantity_skew", alpha=0.3, seed=0)]
    assert max(sizes) > 2 * min(sizes)


def test_min_per_site_and_bad_arguments():
    parts = site_indices(LABELS, 5, "label_skew", alpha=0.05, seed=0, min_per_site=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ValueError, match="cannot give 3 sites"):
        site_indices(np.zeros(2), 3)
    with pytest.raises(ValueError, match="split"):
        site_indices(LABELS, 2, "by_hospital")
    with pytest.raises(ValueError, match="raise alpha"):
        site_indices(LABELS, 4, "label_skew", alpha=0.01, min_per_site=99)


def test_site_data_module_and_refusal_naming_the_site():
    dm = PhantomDataModule(spatial_dims=2, image_size=16, num_train=24, batch_size=4, num_classes=2)
    site = SiteDataModule(dm, indices=[0, 3, 5])
    assert len(site.train_dataset) == 3 and len(next(iter(site.train_dataloader()))["image"]) == 3
    summary = site_summary(site)
    assert summary["image_shape"] == [1, 16, 16] and summary["num_examples"] == 3
    check_sites({"a": summary}, (1, 16, 16), 2)
    with pytest.raises(ValueError, match=r"site b has images of shape \(1, 16, 16\)"):
        check_sites({"a": {**summary, "image_shape": [1, 32, 32]}, "b": summary}, (1, 32, 32), 0)
    with pytest.raises(ValueError, match=r"site a has labels \[1\] outside 0..0"):
        check_sites({"a": {**summary, "classes": [0, 1]}}, (1, 16, 16), 1)
    with pytest.raises(ValueError, match="site a has no labels"):
        check_sites({"a": {**summary, "has_labels": False}}, (1, 16, 16), 2)
