"""Memorization: are synthetic samples copies of training samples?

For each synthetic sample, the distance to its nearest real training sample is compared with
the same distance for held-out real test samples, which the generator never saw (Meehan et al.
2020, "A Non-Parametric Test to Detect Data-Copying in Generative Models"; Carlini et al. 2023,
"Extracting Training Data from Diffusion Models", flag generations unusually close to one
training image). A synthetic sample counts as a copy when it is at least as close to a training sample as
the closest 1% of real test samples are; the copy rate of fresh samples from the training
distribution is then about 1%, and exact copies give 1.0.

Distances are Euclidean, in the feature space of an extractor and in pixel space, computed in
chunks so no matrix larger than ``chunk_size x chunk_size`` exists at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_medaug.metrics.features import collect_images, extract_features
from lightning_medaug.rendering.grid import save_image_grid

__all__ = ["NearestTrain", "memorization_report", "nearest_neighbours", "save_closest_pairs"]


def _flat(x: Tensor) -> Tensor:
    x = x.reshape(x.shape[0], -1)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def nearest_neighbours(query: Tensor, reference: Tensor, k: int = 1, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Distances and indices ``(Nq, k)`` of the ``k`` nearest ``reference`` rows of each ``query`` row.

    Rows are flattened, so images give pixel-space distances and ``(N, D)`` features give
    feature-space ones. Both inputs must be on one device; the result is on it, sorted by distance.
    """
    query = _flat(query)
    reference = _flat(reference).to(query.device, query.dtype)
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query rows have {query.shape[1]} values, reference rows {reference.shape[1]}: "
                         "compare samples of one shape (or features of one extractor)")
    if not 1 <= k <= reference.shape[0]:
        raise ValueError(f"k must be in [1, {reference.shape[0]}] (the reference size), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    distances, indices = [], []
    for start in range(0, query.shape[0], chunk_size):
        q = query[start:start + chunk_size]
        best_d = q.new_empty((q.shape[0], 0))
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for ref_start in range(0, reference.shape[0], chunk_size):
            d = torch.cdist(q, reference[ref_start:ref_start + chunk_size])
            i = torch.arange(ref_start, ref_start + d.shape[1], device=q.device).expand_as(d)
            # Keep only the running k best, so memory stays at one chunk pair.
            merged_d, merged_i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
            best_d, order = merged_d.topk(min(k, merged_d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = merged_i.gather(1, order)
        # cdist's matrix-product form loses precision for rows with large norms (an exact copy
        # can come out at 1e-2); the k winners are re-measured directly, so copies read 0.
        exact = torch.stack([(q - reference[best_i[:, j]]).norm(dim=1) for j in range(best_i.shape[1])], 1)
        exact, order = exact.sort(dim=1)
        distances.append(exact)
        indices.append(best_i.gather(1, order))
    return torch.cat(distances), torch.cat(indices)


def _summary(distances: Tensor) -> dict[str, float]:
    d = distances.double()
    return {"mean": float(d.mean()), "median": float(d.median()), "min": float(d.min()), "max": float(d.max())}


@dataclass(frozen=True)
class NearestTrain:
    """Distances from each synthetic and each held-out sample to its nearest training sample, in one space."""

    synthetic: Tensor  #: (N_synthetic,) distances
    synthetic_index: Tensor  #: (N_synthetic,) index of that training sample
    test: Tensor  #: (N_test,) distances of held-out real samples: the reference

    @classmethod
    def compute(cls, synthetic: Tensor, train: Tensor, test: Tensor, chunk_size: int = 1024) -> NearestTrain:
        syn_d, syn_i = nearest_neighbours(synthetic, train, 1, chunk_size)
        test_d, _ = nearest_neighbours(test, train, 1, chunk_size)
        return cls(syn_d[:, 0], syn_i[:, 0], test_d[:, 0])


def _space_report(nearest: NearestTrain, percentile: float, num_pairs: int) -> dict[str, Any]:
    syn_d, syn_i, test_d = nearest.synthetic, nearest.synthetic_index, nearest.test
    threshold = float(torch.quantile(test_d.double(), percentile / 100.0))
    order = syn_d.argsort()[:num_pairs]
    test_median = float(test_d.median())
    return {
        "copy_rate": float((syn_d <= threshold).double().mean()),
        "threshold": threshold,
        "synthetic_nn": _summary(syn_d),
        "test_nn": _summary(test_d),
        # Below 1: synthetic samples sit closer to the training set than unseen real samples do.
        "median_ratio": float(syn_d.median()) / test_median if test_median > 0 else float("inf"),
        "closest_pairs": [{"synthetic_index": j, "train_index": int(syn_i[j]),
                           "distance": float(syn_d[j])} for j in order.tolist()],
    }


def memorization_report(synthetic: Tensor | Dataset, train: Tensor | Dataset, test: Tensor | Dataset,
                        extractor: nn.Module | None = None,
                        percentile: float = 1.0, num_pairs: int = 16, batch_size: int = 256,
                        chunk_size: int = 1024, features: Sequence[Tensor] | None = None,
                        return_neighbours: bool = False
                        ) -> dict[str, Any] | tuple[dict[str, Any], dict[str, NearestTrain]]:
    """Nearest-training-sample distances of synthetic vs real test samples, in pixel and feature space.

    Args:
        synthetic, train, test: images ``(N, C, *S)`` in [-1, 1] (or map-style data sets of
            samples), one shape for all three; every sample is used.
        extractor: feature extractor (e.g. :func:`train_feature_extractor`); ``None`` skips the
            feature space.
        percentile: the copy threshold is this percentile of test->train nearest distances.
        num_pairs: how many closest (synthetic, train) pairs to list.
        batch_size: images per extractor call.
        chunk_size: rows per distance block.
        features: the extractor's features of ``(synthetic, train, test)`` when the caller has
            them already (e.g. from the fidelity metrics): they are used instead of extracting again.
        return_neighbours: also return each space's :class:`NearestTrain` distances (for plots).

    Returns:
        ``{"num_synthetic", "num_train", "num_test", "percentile", "pixel": {...}, "feature": {...}}``
        (``"feature"`` only with an extractor). Each space holds ``copy_rate`` (fraction of
        synthetic samples whose nearest-train distance is at most ``threshold``), ``threshold``,
        ``synthetic_nn`` and ``test_nn`` (mean/median/min/max of nearest-train distances),
        ``median_ratio`` (synthetic median / test median) and ``closest_pairs`` (a list of
        ``{"synthetic_index", "train_index", "distance"}``, closest first). With
        ``return_neighbours``, a pair ``(report, {space: NearestTrain})``.
    """
    synthetic, train, test = (collect_images(x) for x in (synthetic, train, test))
    shapes = {name: tuple(x.shape[1:]) for name, x in (("synthetic", synthetic), ("train", train), ("test", test))}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"synthetic, train and test images must share one (C, *S) shape, got {shapes}")
    for name, x in (("synthetic", synthetic), ("train", train), ("test", test)):
        if x.ndim not in (4, 5) or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (N, C, H, W) or (N, C, D, H, W) tensor, "
                             f"got shape {tuple(x.shape)}")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be 0 or more, got {num_pairs}")
    report: dict[str, Any] = {"num_synthetic": synthetic.shape[0], "num_train": train.shape[0],
                              "num_test": test.shape[0], "percentile": percentile}
    device = train.device
    neighbours = {"pixel": NearestTrain.compute(synthetic.to(device), train, test.to(device), chunk_size)}
    if features is not None:
        if len(features) != 3:
            raise ValueError(f"features must be the (synthetic, train, test) features, got {len(features)} tensors")
        if [f.shape[0] for f in features] != [x.shape[0] for x in (synthetic, train, test)]:
            raise ValueError("features must have one row per synthetic, train and test sample, got "
                             f"{[f.shape[0] for f in features]} rows for {report['num_synthetic']}, "
                             f"{report['num_train']} and {report['num_test']} samples")
        neighbours["feature"] = NearestTrain.compute(*features, chunk_size)
    elif extractor is not None:
        feats = [extract_features(extractor, x, batch_size) for x in (synthetic, train, test)]
        neighbours["feature"] = NearestTrain.compute(*feats, chunk_size)
    for space, nearest in neighbours.items():
        report[space] = _space_report(nearest, percentile, num_pairs)
    return (report, neighbours) if return_neighbours else report


def save_closest_pairs(synthetic: Tensor, train: Tensor, pairs: Sequence[Mapping[str, Any]], path: str | Path,
                       title: str | None = None, pairs_per_row: int = 4) -> Path:
    """PNG grid of ``(synthetic, nearest train)`` pairs, side by side, captioned with indices and distance.

    ``pairs`` is a ``closest_pairs`` list of :func:`memorization_report`.
    """
    if not pairs:
        raise ValueError("pairs is empty: nothing to draw (memorization_report(num_pairs=...) sets how many)")
    if pairs_per_row < 1:
        raise ValueError(f"pairs_per_row must be at least 1, got {pairs_per_row}")
    tiles, labels = [], []
    for pair in pairs:
        s, t = int(pair["synthetic_index"]), int(pair["train_index"])
        tiles += [synthetic[s].cpu(), train[t].cpu()]
        labels += [f"s{s}", f"t{t} {float(pair['distance']):.3g}"]
    width = tiles[0].shape[-1] * (3 if tiles[0].ndim == 4 else 1)  # 3D tiles show three planes
    scale = max(1, -(-64 // width))  # captions need about 64 pixels of tile width
    return save_image_grid(torch.stack(tiles), path, nrow=2 * pairs_per_row, labels=labels, scale=scale,
                           title=title or "synthetic (s) | nearest training image (t) distance")
