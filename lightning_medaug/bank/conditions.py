"""What a generator is called with when a bank is drawn: its conditioning masks and ``sample`` options."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["check_sample_kwargs", "prepare_masks"]


def check_sample_kwargs(model: Any, sample_kwargs: Mapping[str, Any], method: str = "sample") -> dict[str, Any]:
    """``sample_kwargs`` as a dict; ValueError for one that ``model.<method>`` does not take."""
    params = inspect.signature(getattr(model, method)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    reserved = {"n", "labels", "masks", "generator"} & set(sample_kwargs)
    if reserved:
        raise ValueError(f"sample_kwargs must not set {sorted(reserved)}: the bank writer sets them")
    unknown = [k for k in sample_kwargs if k not in params and not takes_any]
    if unknown:
        accepted = [k for k in params if k not in ("n", "labels", "masks", "generator")]
        raise ValueError(f"{type(model).__name__}.{method}() does not take {unknown}; "
                         f"it takes {accepted or 'no options'}")
    return dict(sample_kwargs)


def prepare_masks(masks: Tensor | np.ndarray | None, mask_names: Sequence[str] | None, requires: bool,
                  mask_shape: tuple[int, ...], model_name: str) -> tuple[np.ndarray | None, list[str] | None]:
    """``masks`` as a contiguous uint8 (M, 1, *S) {0, 1} array and their manifest names; ``ValueError``
    when a mask-conditional model gets none (or another model some), or on a wrong shape or value."""
    if masks is None:
        if requires:
            raise ValueError(f"{model_name} is mask-conditional: pass masks (a folder of masks on the command line)")
        return None, None
    if not requires:
        raise ValueError(f"{model_name} is not mask-conditional: drop the masks")
    array = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if array.ndim == len(mask_shape):  # (M, *S) without the channel axis
        array = array[:, None]
    if array.shape[1:] != mask_shape or len(array) == 0:
        raise ValueError(f"masks must have shape (M, {', '.join(map(str, mask_shape))}) with M >= 1, got {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError("masks must hold only 0 and 1; threshold them first")
    names = [str(i) for i in range(len(array))] if mask_names is None else [str(n) for n in mask_names]
    if len(names) != len(array):
        raise ValueError(f"got {len(names)} mask names for {len(array)} masks")
    if any(os.path.isabs(n) or n.startswith("..") for n in names):
        raise ValueError("mask names are stored in the manifest and must be relative (file names, not paths)")
    return np.ascontiguousarray(array.astype(np.uint8)), names
