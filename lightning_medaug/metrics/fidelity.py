"""Distribution fidelity of synthetic images: Frechet distance, KID, precision/recall/density/coverage.

All three are torchmetrics ``Metric``s on features of a pluggable ``nn.Module`` (``None`` means
pixel space, or inputs that already are ``(N, D)`` features), 2D or 3D alike since the
extractor handles the spatial axes. Their states are summed or concatenated across processes,
and KID draws its subsets from a canonical ordering of the gathered features, so every value
under DDP equals the single-process value on the same data.

We do not wrap torchmetrics' ``FrechetInceptionDistance``: with a custom module it needs a
``num_features`` attribute or probes the module with a 3x299x299 image (wrong for 1-channel and
3D inputs), and it takes the trace of ``sqrt(S1 S2)`` from the eigenvalues of a non-symmetric
product. Here the trace comes from the symmetric ``S1^1/2 S2 S1^1/2``, whose eigenvalues are
real, clamped at zero and stable in double precision.

:func:`fidelity_with_floor` reports every figure twice: synthetic vs real train, and the floor,
real test vs real train, from the same extractor and the same sample counts, because these
estimators are biased by sample count and extractor and mean little without that floor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_medaug.metrics.features import (
    as_feature_matrix,
    collect_images,
    extract_features,
)
from lightning_medaug.metrics.memorization import nearest_neighbours

__all__ = [
    "FrechetDistance",
    "KernelDistance",
    "PrecisionRecall",
    "fidelity_table",
    "fidelity_with_floor",
    "frechet_distance",
    "kernel_distance",
    "precision_recall",
]

FIDELITY_KEYS: tuple[str, ...] = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage")


# -- functional cores -----------------------------------------------------------------------
def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` between two Gaussians.

    The Frechet (2-Wasserstein) distance of Dowson & Landau 1982, as used for FID by Heusel et
    al. 2017. Computed in float64; clamped at 0 against round-off.
    """
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    values, vectors = torch.linalg.eigh(sigma1)
    root1 = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return distance.clamp(min=0)


def _canonical(features: Tensor) -> Tensor:
    """Rows sorted by their sum: gathered features then do not depend on which process held which."""
    return features[torch.argsort(features.double().sum(1), stable=True)]


def _unbiased_mmd2(x: Tensor, y: Tensor, degree: int, gamma: float, coef: float) -> Tensor:
    m, n = x.shape[0], y.shape[0]
    k_xx = (x @ x.T * gamma + coef) ** degree
    k_yy = (y @ y.T * gamma + coef) ** degree
    k_xy = (x @ y.T * gamma + coef) ** degree
    return ((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1)) + (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
            - 2 * k_xy.mean())


def kernel_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int | None = 1000, degree: int = 3,
                    gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Kernel distance (KID; Binkowski et al. 2018, "Demystifying MMD GANs"): mean and std over subsets.

    The unbiased MMD^2 with the polynomial kernel ``(gamma x.y + coef)^degree`` (``gamma=1/D`` by
    default) on ``subsets`` random subsets of ``subset_size`` samples of each set, drawn with a
    generator seeded by ``seed`` from a canonical row order. ``subset_size=None`` gives one
    estimate on all samples (std 0).
    """
    real, fake = _canonical(real.double()), _canonical(fake.double())
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    if subset_size is None:
        return _unbiased_mmd2(real, fake, degree, gamma, coef), real.new_zeros(())
    smallest = min(real.shape[0], fake.shape[0])
    if subset_size > smallest:
        raise ValueError(f"KID subset_size={subset_size} is larger than the smallest set ({smallest} samples); "
                         f"pass subset_size <= {smallest} or more samples")
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        r = real[torch.randperm(real.shape[0], generator=gen)[:subset_size].to(real.device)]
        f = fake[torch.randperm(fake.shape[0], generator=gen)[:subset_size].to(fake.device)]
        values.append(_unbiased_mmd2(r, f, degree, gamma, coef))
    stacked = torch.stack(values)
    return stacked.mean(), (stacked.std(correction=0) if subsets > 1 else stacked.new_zeros(()))


def _ball_counts(points: Tensor, centers: Tensor, radii: Tensor, chunk_size: int) -> Tensor:
    """For each point, how many balls ``B(centers[i], radii[i])`` contain it; chunked."""
    counts = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], chunk_size):
        p = points[start:start + chunk_size]
        for c_start in range(0, centers.shape[0], chunk_size):
            d = torch.cdist(p, centers[c_start:c_start + chunk_size])
            counts[start:start + p.shape[0]] += (d <= radii[c_start:c_start + chunk_size]).sum(1)
    return counts


def precision_recall(real: Tensor, fake: Tensor, k: int = 5, chunk_size: int = 1024) -> dict[str, Tensor]:
    """Precision/recall of k-NN manifolds (Kynkaanniemi et al. 2019), density/coverage (Naeem et al. 2020).

    Each sample's ball reaches its ``k``-th nearest neighbour within its own set.
    ``precision``: share of fake samples inside some real ball; ``recall``: share of real samples
    inside some fake ball; ``density``: real balls containing each fake sample, averaged and
    divided by ``k`` (about 1 for matching distributions); ``coverage``: share of real balls
    holding at least one fake sample. One ``k`` for all four, as in Naeem et al.'s reference code.
    """
    real, fake = real.float(), fake.float().to(real.device)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and fake samples, got "
                         f"{real.shape[0]} real and {fake.shape[0]} fake; pass more samples or a smaller k")
    real_radii = nearest_neighbours(real, real, k + 1, chunk_size)[0][:, k]  # column 0 is the sample itself
    fake_radii = nearest_neighbours(fake, fake, k + 1, chunk_size)[0][:, k]
    fake_in_real = _ball_counts(fake, real, real_radii, chunk_size)
    real_in_fake = _ball_counts(real, fake, fake_radii, chunk_size)
    nearest_fake = nearest_neighbours(real, fake, 1, chunk_size)[0][:, 0]
    return {
        "precision": (fake_in_real > 0).double().mean(),
        "recall": (real_in_fake > 0).double().mean(),
        "density": fake_in_real.double().sum() / (k * fake.shape[0]),
        "coverage": (nearest_fake <= real_radii).double().mean(),
    }


# -- Metric classes -------------------------------------------------------------------------
class _FeatureMetric(Metric):
    """A metric on features of ``feature_extractor`` (``None``: flattened inputs), kept frozen in eval mode."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, feature_extractor: nn.Module | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if feature_extractor is not None and not isinstance(feature_extractor, nn.Module):
            raise ValueError(f"feature_extractor must be an nn.Module mapping images to (N, D) features or None, "
                             f"got {type(feature_extractor).__name__}")
        self.feature_extractor = feature_extractor
        if feature_extractor is not None:
            feature_extractor.eval()

    def train(self, mode: bool = True) -> _FeatureMetric:
        super().train(mode)
        if self.feature_extractor is not None:  # a parent's .train() must not unfreeze batch norm
            self.feature_extractor.eval()
        return self

    def _gathered(self) -> tuple[Tensor, Tensor]:
        """The ``real_features`` / ``fake_features`` list states as matrices (lists before a sync, tensors after)."""
        states = [getattr(self, name) for name in ("real_features", "fake_features")]
        if any(isinstance(state, list) and not state for state in states):
            raise ValueError(f"{type(self).__name__} needs real and fake samples: call update(images, real=True) "
                             "and update(images, real=False) first")
        return dim_zero_cat(states[0]), dim_zero_cat(states[1])

    def _features(self, images: Tensor) -> Tensor:
        if self.feature_extractor is None:
            return images.reshape(images.shape[0], -1).float()
        with torch.no_grad():
            return as_feature_matrix(self.feature_extractor(images))


class FrechetDistance(_FeatureMetric):
    """Frechet distance between Gaussians fitted to real and fake features (FID with any extractor).

    States are feature sums, outer-product sums and counts in float64, summed across processes.
    ``update(images, real=True/False)``; ``compute()`` returns a float64 scalar.

    Args:
        feature_extractor: ``nn.Module`` images -> ``(N, D)``; ``None`` flattens the inputs.
        num_features: ``D``; read from ``feature_extractor.num_features`` when not given (timm
            models and :class:`DomainFeatureExtractor` have it).
    """

    higher_is_better = False

    def __init__(self, feature_extractor: nn.Module | None = None, num_features: int | None = None, **kwargs: Any):
        super().__init__(feature_extractor, **kwargs)
        num_features = num_features or getattr(feature_extractor, "num_features", None)
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError("FrechetDistance needs the feature width: pass num_features=D (the extractor has no "
                             "integer num_features attribute)")
        self.num_features = num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, real: bool) -> None:
        features = self._features(images).double()
        if features.shape[1] != self.num_features:
            raise ValueError(f"got {features.shape[1]} features per sample, expected num_features={self.num_features}")
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + features.T @ features)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + features.shape[0])

    def _gaussian(self, side: str) -> tuple[Tensor, Tensor]:
        n = getattr(self, f"{side}_count")
        if n < 2:
            raise ValueError(f"FrechetDistance needs at least 2 {side} samples, got {int(n)}; call "
                             f"update(images, real={side == 'real'}) with more images")
        mu = getattr(self, f"{side}_sum") / n
        sigma = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
        return mu, sigma

    def compute(self) -> Tensor:
        return frechet_distance(*self._gaussian("real"), *self._gaussian("fake"))


class KernelDistance(_FeatureMetric):
    """Kernel distance (KID) of :func:`kernel_distance`; ``compute()`` returns ``(mean, std)``.

    Features are concatenated across processes and put in a canonical order before the seeded
    subset draws, so the value does not depend on the number of processes or the data order.
    """

    higher_is_better = False

    def __init__(self, feature_extractor: nn.Module | None = None, subsets: int = 100,
                 subset_size: int | None = 1000, degree: int = 3, gamma: float | None = None, coef: float = 1.0,
                 seed: int = 0, **kwargs: Any):
        super().__init__(feature_extractor, **kwargs)
        if subsets < 1:
            raise ValueError(f"subsets must be at least 1, got {subsets}")
        if subset_size is not None and subset_size < 2:
            raise ValueError(f"subset_size must be at least 2 (or None for all samples), got {subset_size}")
        if degree < 1:
            raise ValueError(f"degree must be at least 1, got {degree}")
        if gamma is not None and not gamma > 0:
            raise ValueError(f"gamma must be positive or None (1 / feature width), got {gamma}")
        self.subsets, self.subset_size, self.degree, self.gamma, self.coef, self.seed = (
            subsets, subset_size, degree, gamma, coef, seed)
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, images: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(self._features(images))

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = self._gathered()
        return kernel_distance(real, fake, self.subsets, self.subset_size, self.degree, self.gamma, self.coef,
                               self.seed)


class PrecisionRecall(_FeatureMetric):
    """Precision, recall, density and coverage of :func:`precision_recall`; ``compute()`` returns a dict.

    Args:
        feature_extractor: ``nn.Module`` images -> ``(N, D)``; ``None`` flattens the inputs.
        k: neighbour defining each sample's ball (5, as Naeem et al. recommend; Kynkaanniemi used 3).
        chunk_size: rows per distance block (memory is ``chunk_size^2``).
    """

    higher_is_better = True

    def __init__(self, feature_extractor: nn.Module | None = None, k: int = 5, chunk_size: int = 1024,
                 **kwargs: Any):
        super().__init__(feature_extractor, **kwargs)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.k, self.chunk_size = k, chunk_size
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, images: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(self._features(images))

    def compute(self) -> dict[str, Tensor]:
        real, fake = self._gathered()
        return precision_recall(real, fake, self.k, self.chunk_size)


# -- the report with its real-vs-real floor ---------------------------------------------------
def _figures(reference: Tensor, other: Tensor, k: int, kid_subsets: int, kid_subset_size: int | None, seed: int,
             chunk_size: int) -> dict[str, float]:
    mu_r, mu_o = reference.double().mean(0), other.double().mean(0)
    fd = frechet_distance(mu_r, torch.cov(reference.double().T).reshape(mu_r.numel(), -1),
                          mu_o, torch.cov(other.double().T).reshape(mu_o.numel(), -1))
    kid_mean, kid_std = kernel_distance(reference, other, kid_subsets, kid_subset_size, seed=seed)
    figures = {"fd": float(fd), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}
    figures.update({name: float(v) for name, v in precision_recall(reference, other, k, chunk_size).items()})
    return figures


def fidelity_with_floor(feature_extractor: nn.Module | None, synthetic: Tensor | Dataset, real_train: Tensor | Dataset,
                        real_test: Tensor | Dataset, num_samples: int | None = None, seed: int = 0, k: int = 5,
                        kid_subsets: int = 100, kid_subset_size: int = 1000, batch_size: int = 256,
                        chunk_size: int = 1024) -> dict[str, Any]:
    """Fidelity of ``synthetic`` against ``real_train``, beside the floor ``real_test`` against ``real_train``.

    Every set (an image tensor ``(N, C, *S)`` in [-1, 1] or a map-style data set of samples) is
    reduced to the same ``n = min(num_samples, len(synthetic), len(real_train), len(real_test))``
    samples (seeded subsets; one train subset serves both comparisons), and features come from
    one ``feature_extractor`` (``None``: pixel space). Call it on one process with all the data.

    Returns:
        ``{"num_samples": n, "feature_dim": D, "k": k, "kid_subset_size": s, "seed": seed,
        "synthetic": {...}, "floor": {...}}`` where both inner dicts hold ``fd``, ``kid_mean``,
        ``kid_std``, ``precision``, ``recall``, ``density``, ``coverage`` as floats.
    """
    sources = {"synthetic": synthetic, "real_train": real_train, "real_test": real_test}
    sizes = {name: len(x) for name, x in sources.items()}  # type: ignore[arg-type]
    n = min([*sizes.values(), *([num_samples] if num_samples is not None else [])])
    if n <= k or n < 2:
        raise ValueError(f"fidelity needs more than k={k} samples in every set; the smallest has {n} "
                         f"(sizes: {sizes}, num_samples={num_samples})")
    images = {name: collect_images(x, n, seed + i) for i, (name, x) in enumerate(sources.items())}
    shapes = {name: tuple(x.shape[1:]) for name, x in images.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"synthetic, real_train and real_test must share one (C, *S) shape, got {shapes}")
    features = {name: extract_features(feature_extractor, x, batch_size) for name, x in images.items()}
    # With n <= kid_subset_size every subset would hold all samples: one full estimate says the same.
    subset = kid_subset_size if n > kid_subset_size else None
    args = (k, kid_subsets, subset, seed, chunk_size)
    return {
        "num_samples": n, "feature_dim": features["real_train"].shape[1], "k": k, "kid_subset_size": subset or n,
        "seed": seed,
        "synthetic": _figures(features["real_train"], features["synthetic"], *args),
        "floor": _figures(features["real_train"], features["real_test"], *args),
    }


def fidelity_table(result: dict[str, Any]) -> str:
    """A markdown table of :func:`fidelity_with_floor`'s result: metric | synthetic | real floor."""
    header = (f"| metric (n={result['num_samples']}, D={result['feature_dim']}) | synthetic vs train | "
              "real test vs train (floor) |")
    lines = [header, "|---|---|---|"]
    for key in FIDELITY_KEYS:
        syn, floor = result["synthetic"][key], result["floor"][key]
        lines.append(f"| {key} | {_fmt(syn)} | {_fmt(floor)} |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"
