"""Memorization: copies of training images are flagged, fresh samples are not; closest pairs drawn."""

import pytest
import torch
from PIL import Image

from lightning_medaug.data import PhantomDataset, make_phantoms
from lightning_medaug.metrics import (
    DomainFeatureExtractor,
    memorization_report,
    nearest_neighbours,
    save_closest_pairs,
)
from lightning_medaug.tasks import ClassificationTask


@pytest.fixture(scope="module")
def phantoms():
    train, _, _ = make_phantoms(64, 2, 16, seed=0)
    test, _, _ = make_phantoms(48, 2, 16, seed=1)
    fresh, _, _ = make_phantoms(48, 2, 16, seed=2)
    return train, test, fresh


def test_chunked_nearest_neighbours_equal_brute_force():
    gen = torch.Generator().manual_seed(0)
    query, reference = torch.randn(50, 1, 4, 4, generator=gen), torch.randn(70, 1, 4, 4, generator=gen)
    distances, indices = nearest_neighbours(query, reference, k=3, chunk_size=16)
    full = torch.cdist(query.flatten(1), reference.flatten(1))
    expected_d, expected_i = full.topk(3, dim=1, largest=False)
    assert torch.equal(indices, expected_i)
    assert torch.allclose(distances, expected_d, atol=1e-5)


def test_exact_copies_have_copy_rate_one_and_fresh_samples_a_low_one(phantoms, tmp_path):
    train, test, fresh = phantoms
    extractor = DomainFeatureExtractor.from_task(ClassificationTask(backbone="test_resnet"))
    copies = train[torch.tensor([5, 17, 3, 40, 22, 9, 31, 60])]
    report = memorization_report(copies, train, test, extractor, num_pairs=4)
    for space in ("pixel", "feature"):
        assert report[space]["copy_rate"] == 1.0
        assert report[space]["threshold"] > 0 and report[space]["synthetic_nn"]["max"] < 1e-3
        pairs = report[space]["closest_pairs"]
        assert len(pairs) == 4
        assert all(copies[p["synthetic_index"]].equal(train[p["train_index"]]) for p in pairs)

    fresh_report = memorization_report(fresh, train, test, extractor, chunk_size=10)
    assert fresh_report["num_synthetic"] == 48 and fresh_report["percentile"] == 1.0
    for space in ("pixel", "feature"):
        assert fresh_report[space]["copy_rate"] < 0.15
        assert 0.7 < fresh_report[space]["median_ratio"] < 1.4  # as far from train as unseen real images
        distances = [p["distance"] for p in fresh_report[space]["closest_pairs"]]
        assert distances == sorted(distances) and distances[0] == fresh_report[space]["synthetic_nn"]["min"]

    path = save_closest_pairs(fresh, train, fresh_report["pixel"]["closest_pairs"][:6], tmp_path / "pairs.png",
                              pairs_per_row=3)
    width, height = Image.open(path).size
    assert width > height > 64  # 2 rows of 3 (synthetic, train) pairs, tiles scaled up for captions


def test_3d_volumes_data_sets_and_input_checks(tmp_path):
    train, _, _ = make_phantoms(12, 3, 8, seed=0)
    test = PhantomDataset(8, spatial_dims=3, image_size=8, seed=1)  # a data set of sample dicts works too
    report = memorization_report(train[:4], train, test, num_pairs=2)
    assert report["pixel"]["copy_rate"] == 1.0 and "feature" not in report
    assert save_closest_pairs(train[:4], train, report["pixel"]["closest_pairs"], tmp_path / "p3d.png").is_file()
    with pytest.raises(ValueError, match="share one"):
        memorization_report(train[:, :, :4], train, test.images)
    with pytest.raises(ValueError, match="percentile"):
        memorization_report(train, train, test, percentile=0.0)


def test_precomputed_features_give_the_extracted_report_and_the_distances():
    torch.manual_seed(1)
    train, test, synthetic = (torch.rand(n, 1, 8, 8) * 2 - 1 for n in (30, 20, 10))
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6))
    extracted = memorization_report(synthetic, train, test, extractor)
    with torch.no_grad():
        feats = [extractor(x) for x in (synthetic, train, test)]
    given, neighbours = memorization_report(synthetic, train, test, features=feats, return_neighbours=True)
    assert given["feature"]["copy_rate"] == extracted["feature"]["copy_rate"]
    assert given["feature"]["threshold"] == pytest.approx(extracted["feature"]["threshold"], rel=1e-5)
    assert set(neighbours) == {"pixel", "feature"}
    assert neighbours["feature"].synthetic.shape == (10,) and neighbours["feature"].test.shape == (20,)
    direct = torch.cdist(feats[0], feats[1]).min(dim=1).values
    torch.testing.assert_close(neighbours["feature"].synthetic, direct, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one row per synthetic"):
        memorization_report(synthetic, train, test, features=[feats[0][:3], feats[1], feats[2]])
