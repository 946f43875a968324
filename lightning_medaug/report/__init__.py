"""Deprecated name of :mod:`lightning_medaug.rendering` (sample grids, plots, HTML, run summaries).

"report" also named the evaluation's and the study's reports; the rendering helpers now live in
``lightning_medaug.rendering``. Importing this package (or ``lightning_medaug.report.grid`` and its
other modules) still works for one release, with a FutureWarning.
"""

import sys
import warnings

from lightning_medaug.rendering import *  # noqa: F403  (the same public names, for old imports)
from lightning_medaug.rendering import __all__ as __all__
from lightning_medaug.rendering import grid, html, plots, run_summary

warnings.warn("lightning_medaug.report is deprecated: import lightning_medaug.rendering instead",
              FutureWarning, stacklevel=2)

# `import lightning_medaug.report.grid` finds the renamed modules themselves, not copies
for _module in (grid, html, plots, run_summary):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
del _module
__path__: list[str] = []  # a package without files of its own: every submodule is an alias above
