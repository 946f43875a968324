"""Sites of a federation: how one data set's training split is dealt out to sites, and what each holds.

Splits simulate hospitals that cannot pool their images (the partitions of Hsu et al., "Measuring the
Effects of Non-Identical Data Distribution for Federated Visual Classification", 2019, and of Li et
al., "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022):

* ``iid``: a seeded permutation cut into ``num_sites`` parts of (nearly) equal size;
* ``label_skew``: for each class, the share each site gets is drawn from ``Dirichlet(alpha)``
  (small ``alpha``: sites see mostly one class);
* ``quantity_skew``: the site sizes are drawn from ``Dirichlet(alpha)``, the images IID.

Every split is a pure function of the labels and a seed, gives each site at least ``min_per_site``
images and never gives one image to two sites. :func:`check_sites` refuses, before the first round,
a site whose images or classes do not fit the generator, naming the site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_medaug.data.batch import unpack_batch
from lightning_medaug.validation import check_at_least, check_choice, check_positive

__all__ = ["SPLITS", "SiteDataModule", "check_sites", "dataset_labels", "site_indices", "site_summary"]

#: How the training split is dealt out to sites.
SPLITS = ("iid", "label_skew", "quantity_skew")
#: Draws tried before a skewed split that leaves a site too small is refused.
_TRIES = 1000


def site_indices(labels: Sequence[int] | np.ndarray, num_sites: int, split: str = "iid", alpha: float = 0.5,
                 seed: int = 0, min_per_site: int = 1) -> list[np.ndarray]:
    """Indices (sorted, disjoint, covering all samples) of each site's share of ``labels``.

    Args:
        labels: one class index per training sample (for ``iid`` and ``quantity_skew`` only the
            count matters).
        num_sites: number of sites (>= 1).
        split: one of :data:`SPLITS`.
        alpha: concentration of the Dirichlet draws of the skewed splits (> 0); ignored for ``iid``.
        seed: seed of every draw.
        min_per_site: the fewest samples a site may get; skewed draws are repeated until each site
            has that many.
    """
    labels = np.asarray(labels).reshape(-1)
    check_at_least(1, num_sites=num_sites, min_per_site=min_per_site)
    check_choice("split", split, SPLITS)
    check_positive(alpha=alpha)
    if len(labels) < num_sites * min_per_site:
        raise ValueError(f"{len(labels)} training samples cannot give {num_sites} sites {min_per_site} each: "
                         "use fewer sites or more data")
    rng = np.random.default_rng(seed)
    for _ in range(_TRIES if split != "iid" else 1):
        parts = _draw(labels, num_sites, split, alpha, rng)
        if min(len(p) for p in parts) >= min_per_site:
            return [np.sort(p).astype(np.int64) for p in parts]
    raise ValueError(f"{split} with alpha={alpha} left a site with fewer than {min_per_site} samples in {_TRIES} "
                     "draws: raise alpha or use fewer sites")


def _draw(labels: np.ndarray, num_sites: int, split: str, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    if split == "label_skew":
        parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            cuts = _cuts(rng.dirichlet([alpha] * num_sites), len(members))
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].append(chunk)
        return [np.concatenate(p) for p in parts]
    order = rng.permutation(len(labels))
    if split == "iid":
        return list(np.array_split(order, num_sites))
    return list(np.split(order, _cuts(rng.dirichlet([alpha] * num_sites), len(order))))


def _cuts(shares: np.ndarray, n: int) -> np.ndarray:
    """Where to cut ``n`` items so that the parts follow ``shares`` (rounded, summing to ``n``)."""
    return np.round(np.cumsum(shares)[:-1] * n).astype(int)


class SiteDataModule(L.LightningDataModule):
    """One site's share of another data module's training split (a ``Subset`` of its ``train_dataset``).

    The site trains on those images only; it has no validation loader (a federation's model is
    judged on the global model, not per site).

    Args:
        datamodule: any data module with a ``train_dataset`` (e.g. :class:`~lightning_medaug.data.MedMNISTDataModule`).
        indices: the site's indices into that training split (from :func:`site_indices`); ``None``
            for all of it (a site that holds its own data).
        batch_size: the loader's batch size; ``None`` takes the data module's.
    """

    def __init__(self, datamodule: L.LightningDataModule, indices: Sequence[int] | None = None,
                 batch_size: int | None = None):
        super().__init__()
        self.datamodule = datamodule
        self.indices = None if indices is None else [int(i) for i in indices]
        self.batch_size = batch_size or int(getattr(datamodule, "hparams", {}).get("batch_size", 32))
        self._train: Dataset | None = None

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    @property
    def train_dataset(self) -> Dataset:
        if self._train is None:
            self.datamodule.setup("fit")
            full = self.datamodule.train_dataset
            self._train = full if self.indices is None else Subset(full, self.indices)
            if len(self._train) == 0:
                raise ValueError("this site holds no training images")
        return self._train

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset  # noqa: B018 (loads the split and checks it is not empty)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True)


def site_summary(datamodule: SiteDataModule) -> dict[str, Any]:
    """What a site tells the server before round 1: its image shape, classes and size (no image)."""
    dataset = datamodule.train_dataset
    images, labels, _ = unpack_batch(next(iter(DataLoader(dataset, batch_size=1))))
    all_labels = dataset_labels(dataset)
    return {"image_shape": list(images.shape[1:]), "num_examples": len(dataset),
            "classes": sorted({int(v) for v in all_labels}) if all_labels is not None else [],
            "has_labels": labels is not None}


def dataset_labels(dataset: Dataset) -> np.ndarray | None:
    """Every label of ``dataset`` (read through the sample convention), or ``None`` without labels."""
    found = []
    for batch in DataLoader(dataset, batch_size=256):
        _, labels, _ = unpack_batch(batch)
        if labels is None:
            return None
        found.append(labels.reshape(-1).numpy())
    return np.concatenate(found)


def check_sites(summaries: Mapping[str, Mapping[str, Any]], image_shape: Sequence[int], num_classes: int) -> None:
    """Refuse sites that do not fit a generator of ``image_shape`` and ``num_classes`` (0: unconditional).

    Raises ``ValueError`` naming the first site whose images have another shape, that has no labels
    for a class-conditional generator, or whose labels lie outside ``0..num_classes - 1``.
    """
    expected = [int(s) for s in image_shape]
    for site, summary in summaries.items():
        shape = [int(s) for s in summary["image_shape"]]
        if shape != expected:
            raise ValueError(f"site {site} has images of shape {tuple(shape)}, the generator expects "
                             f"{tuple(expected)}: resample that site's images or set the generator's image_size and "
                             "in_channels to match")
        if num_classes == 0:
            continue
        if not summary["has_labels"]:
            raise ValueError(f"site {site} has no labels, the generator is class-conditional (num_classes="
                             f"{num_classes}): give that site labels or train an unconditional generator")
        outside = [c for c in summary["classes"] if not 0 <= c < num_classes]
        if outside:
            raise ValueError(f"site {site} has labels {outside} outside 0..{num_classes - 1}: map that site's classes "
                             "to the federation's class indices")
