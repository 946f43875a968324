"""Rendering only: sample grids, learning curves, HTML pages, run summaries (``metrics.json``)."""

from lightning_medaug.rendering.grid import (
    make_grid_array,
    save_image_grid,
    volume_to_planes,
)
from lightning_medaug.rendering.plots import plot_curves
from lightning_medaug.rendering.run_summary import RunSummary

__all__ = ["RunSummary", "make_grid_array", "plot_curves", "save_image_grid", "volume_to_planes"]
