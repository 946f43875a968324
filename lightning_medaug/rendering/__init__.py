"""Pictures and summaries of runs: sample grids, learning curves, ``metrics.json``."""

from lightning_medaug.report.grid import (
    make_grid_array,
    save_image_grid,
    volume_to_planes,
)
from lightning_medaug.report.plots import plot_curves
from lightning_medaug.report.run_summary import RunSummary

__all__ = ["RunSummary", "make_grid_array", "plot_curves", "save_image_grid", "volume_to_planes"]
