"""Frechet distance, KID and precision/recall/density/coverage: values, 2D/3D extractors, the floor."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lightning_medaug.data import PhantomDataset, make_phantoms
from lightning_medaug.metrics import (
    DomainFeatureExtractor,
    FrechetDistance,
    KernelDistance,
    PrecisionRecall,
    fidelity_table,
    fidelity_with_floor,
    kernel_distance,
    precision_recall,
)
from lightning_medaug.tasks import ClassificationTask


def _gaussians(n=300, d=8, shift=1.0):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    return a, b, b + shift


def test_frechet_distance_is_zero_on_itself_grows_with_shift_and_matches_scipy():
    a, b, shifted = _gaussians()
    fd = FrechetDistance(num_features=8)
    for chunk in a.split(64):  # batched updates accumulate to the whole-set statistics
        fd.update(chunk, real=True)
        fd.update(chunk, real=False)
    assert float(fd.compute()) == pytest.approx(0.0, abs=1e-8)

    same, far = FrechetDistance(num_features=8), FrechetDistance(num_features=8)
    same.update(a, True), same.update(b, False), far.update(a, True), far.update(shifted, False)
    assert float(far.compute()) > 10 * float(same.compute()) > 0
    # Reference: the textbook formula with scipy's matrix square root of S1 S2.
    x, y = a.double().numpy(), shifted.double().numpy()
    s1, s2 = np.cov(x.T), np.cov(y.T)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert float(far.compute()) == pytest.approx(ref, rel=1e-6)


def test_kid_near_zero_for_one_distribution_and_independent_of_order():
    a, b, shifted = _gaussians()
    same_mean, same_std = kernel_distance(a, b, subsets=20, subset_size=100)
    far_mean, _ = kernel_distance(a, shifted, subsets=20, subset_size=100)
    assert abs(float(same_mean)) < 0.05 and float(far_mean) > 1.0
    assert float(same_std) > 0
    # Canonical ordering: shuffled inputs draw the same subsets, hence the same value.
    perm = torch.randperm(300)
    assert float(kernel_distance(a[perm], b.flip(0), 20, 100)[0]) == pytest.approx(float(same_mean), rel=1e-12)

    kid = KernelDistance(subsets=5, subset_size=50)
    kid.update(a, True), kid.update(shifted, False)
    assert float(kid.compute()[0]) == pytest.approx(float(kernel_distance(a, shifted, 5, 50)[0]), rel=1e-12)
    with pytest.raises(ValueError, match="subset_size=1000 is larger than the smallest set"):
        kernel_distance(a, b, subsets=2, subset_size=1000)


def test_precision_recall_density_coverage_identical_overlapping_and_disjoint():
    a, b, _ = _gaussians()
    identical = precision_recall(a, a.clone(), k=5)
    assert all(float(identical[key]) == 1.0 for key in ("precision", "recall", "coverage"))
    overlap = precision_recall(a, b, k=5)
    assert 0.8 < float(overlap["precision"]) < 1.0 and 0.8 < float(overlap["recall"]) < 1.0
    assert 0.7 < float(overlap["density"]) < 1.3
    disjoint = precision_recall(a, a + 100.0, k=5)
    assert all(float(v) == 0.0 for v in disjoint.values())

    metric = PrecisionRecall(k=5, chunk_size=37)  # chunks smaller than the sets change nothing
    metric.update(a, True), metric.update(b, False)
    assert {k: float(v) for k, v in metric.compute().items()} == pytest.approx(
        {k: float(v) for k, v in overlap.items()})
    with pytest.raises(ValueError, match="needs more than 5 real and fake samples"):
        precision_recall(a[:5], b, k=5)


@pytest.mark.parametrize("spatial_dims,size,backbone", [(2, 16, "test_resnet"), (3, 8, "resnet10")])
def test_metrics_on_domain_extractor_features_2d_and_3d(spatial_dims, size, backbone):
    extractor = DomainFeatureExtractor.from_task(
        ClassificationTask(backbone=backbone, spatial_dims=spatial_dims))
    real, _, _ = make_phantoms(24, spatial_dims, size, seed=0)
    other, _, _ = make_phantoms(24, spatial_dims, size, seed=1)
    fd = FrechetDistance(extractor)  # the width comes from extractor.num_features
    kid = KernelDistance(extractor, subsets=3, subset_size=12)
    pr = PrecisionRecall(extractor, k=3)
    for metric in (fd, kid, pr):
        metric.update(real, real=True)
        metric.update(real, real=False)
    assert float(fd.compute()) == pytest.approx(0.0, abs=1e-6)
    assert float(pr.compute()["precision"]) == 1.0
    kid.reset(), fd.reset()
    fd.update(real, True), fd.update(other * 0.2, False), kid.update(real, True), kid.update(other * 0.2, False)
    assert float(fd.compute()) > 0 and torch.isfinite(kid.compute()[0])
    fd.train()  # a parent's train() leaves the extractor frozen in eval mode
    assert not extractor.training and not any(p.requires_grad for p in extractor.parameters())


def test_metric_arguments_are_validated():
    with pytest.raises(ValueError, match="num_features"):
        FrechetDistance(nn.Flatten())
    with pytest.raises(ValueError, match="nn.Module"):
        KernelDistance(feature_extractor="inception")
    fd = FrechetDistance(nn.Identity(), num_features=4)
    with pytest.raises(ValueError, match=r"expected \(N, D\)"):
        fd.update(torch.zeros(2, 1, 4, 4), real=True)
    with pytest.raises(ValueError, match="at least 2 real samples"):
        fd.compute()


def test_fidelity_with_floor_reports_synthetic_beside_real_floor_at_equal_counts():
    train, _, _ = make_phantoms(80, 2, 16, seed=0)
    test, _, _ = make_phantoms(40, 2, 16, seed=1)
    fresh, _, _ = make_phantoms(60, 2, 16, seed=2)
    good = fidelity_with_floor(None, fresh, train, PhantomDataset(40, image_size=16, seed=1), seed=0, kid_subsets=5)
    bad = fidelity_with_floor(None, (fresh * 0.3).clamp(-1, 1), train, test, seed=0, kid_subsets=5)
    assert good["num_samples"] == bad["num_samples"] == 40  # the test split is the smallest
    assert good["floor"] == bad["floor"]  # same seed, same subsets, same floor
    # Fresh samples of the training distribution sit near the floor; degraded ones far above it.
    assert bad["synthetic"]["fd"] > 3 * good["synthetic"]["fd"]
    assert good["synthetic"]["fd"] < 2 * good["floor"]["fd"]
    assert good["synthetic"]["precision"] > 0.5 > bad["synthetic"]["precision"]
    table = fidelity_table(bad)
    assert "floor" in table and table.count("\n") == 8
    with pytest.raises(ValueError, match="share one"):
        fidelity_with_floor(None, fresh[:, :, :8], train, test)
