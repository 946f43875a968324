"""The evaluation report's feature-space pictures: a 2D PCA map and nearest-neighbour histograms.

Both read what the metrics computed (the fidelity metrics' features, the memorization check's
distances), so what a reader sees is what was measured:
synthetic samples that cover the real cloud in the PCA map have high recall; a synthetic
nearest-neighbour histogram shifted left of the held-out one is what memorization looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_medaug.metrics import NearestTrain

__all__ = ["save_distance_histograms", "save_feature_pca"]

_COLOURS = {"train": "#9aa0a6", "test": "#1a73e8", "synthetic": "#e8710a"}


def save_feature_pca(features: dict[str, Tensor], path: str | Path, max_points: int = 2000, seed: int = 0) -> Path:
    """Scatter ``features`` (``{"train", "test", "synthetic"}`` -> (N, D)) on the first two principal
    axes of the real training features; at most ``max_points`` seeded points per set are drawn."""
    train = features["train"].double().flatten(1)
    mean = train.mean(0, keepdim=True)
    # principal axes of the real training cloud: the map is the same whatever bank is evaluated
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    axes = v[:2].T
    generator = torch.Generator().manual_seed(seed)
    from lightning_medaug.rendering.plots import (  # matplotlib only when drawing
        plt,
        save_figure,
    )

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for name in ("train", "test", "synthetic"):
        x = features[name].double().flatten(1)
        if len(x) > max_points:
            x = x[torch.randperm(len(x), generator=generator)[:max_points]]
        xy = ((x - mean) @ axes).numpy()
        ax.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.5, color=_COLOURS[name], label=f"{name} ({len(x)})",
                   edgecolors="none")
    ax.set_xlabel("PC 1 of real training features")
    ax.set_ylabel("PC 2")
    ax.set_title("features: real training, held-out real, synthetic")
    ax.legend(fontsize=8, markerscale=3)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_distance_histograms(nearest: NearestTrain, path: str | Path, threshold: float | None = None,
                             space: str = "feature") -> Path:
    """Histograms of nearest-training-sample distances of synthetic and held-out real samples
    (a :class:`~lightning_medaug.metrics.NearestTrain` of the memorization check), with its copy
    threshold as a vertical line."""
    syn, held_out = nearest.synthetic.cpu().numpy(), nearest.test.cpu().numpy()
    from lightning_medaug.rendering.plots import (  # matplotlib only when drawing
        plt,
        save_figure,
    )

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    top = float(max(syn.max(), held_out.max()))
    bins = torch.linspace(0.0, top * 1.02 + 1e-12, 41).numpy()
    ax.hist(held_out, bins=bins, density=True, alpha=0.55, color=_COLOURS["test"],
            label=f"held-out real ({len(held_out)})")
    ax.hist(syn, bins=bins, density=True, alpha=0.55, color=_COLOURS["synthetic"], label=f"synthetic ({len(syn)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="copy threshold")
    ax.set_xlabel(f"distance to the nearest training sample ({space} space)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
