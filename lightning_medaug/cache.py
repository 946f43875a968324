"""The one cache folder: downloaded and extracted weights, trained feature extractors.

``$MEDAUG_CACHE`` names it (as ``$MEDAUG_DATA`` names the data folder), else
``~/.cache/lightning_medaug``. The name used before, ``$LIGHTNING_MEDAUG_CACHE``, is still read
with a ``FutureWarning``, so existing setups keep their cache until they rename the variable.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "DEPRECATED_CACHE_ENV_VAR", "cache_folder"]

#: Environment variable naming the cache folder.
CACHE_ENV_VAR = "MEDAUG_CACHE"
#: The former name of :data:`CACHE_ENV_VAR`, read as an alias until it is removed.
DEPRECATED_CACHE_ENV_VAR = "LIGHTNING_MEDAUG_CACHE"


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MEDAUG_CACHE``, else ``~/.cache/lightning_medaug``.

    ``$LIGHTNING_MEDAUG_CACHE`` is used (with a ``FutureWarning``) when ``$MEDAUG_CACHE`` is not
    set, and ignored (with a ``FutureWarning``) when both are set to different folders.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    current, former = os.environ.get(CACHE_ENV_VAR), os.environ.get(DEPRECATED_CACHE_ENV_VAR)
    if former and not current:
        warnings.warn(f"${DEPRECATED_CACHE_ENV_VAR} is deprecated and will stop being read: rename it to "
                      f"${CACHE_ENV_VAR} (same meaning)", FutureWarning, stacklevel=2)
        current = former
    elif former and Path(former).expanduser() != Path(current).expanduser():
        warnings.warn(f"${DEPRECATED_CACHE_ENV_VAR}={former} is ignored because ${CACHE_ENV_VAR}={current} is set; "
                      f"unset ${DEPRECATED_CACHE_ENV_VAR}", FutureWarning, stacklevel=2)
    return Path(current).expanduser() if current else Path.home() / ".cache" / "lightning_medaug"
