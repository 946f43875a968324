"""Plots for run folders and reports (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and CI with no display
import matplotlib.pyplot as plt

__all__ = ["plot_curves", "save_figure"]


def plot_curves(history: Iterable[Mapping[str, float]], path: str | Path, title: str | None = None) -> Path:
    """Plot per-epoch curves: one panel for losses, one for scores (AUC, accuracy, Dice, mAP)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in history:
        epoch = row.get("epoch", len(series))
        for key, value in row.items():
            if key not in ("epoch", "step") and "/" in key and not key.endswith("_step"):
                series[key.removesuffix("_epoch")].append((epoch, value))
    losses = {k: v for k, v in series.items() if "loss" in k}
    scores = {k: v for k, v in series.items() if "loss" not in k}
    panels = [(name, group) for name, group in (("loss", losses), ("score", scores)) if group]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, (name, group) in zip(axes[0], panels):
        for key, points in sorted(group.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` and close it (figures otherwise stay in pyplot's memory)."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
