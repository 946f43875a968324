"""How a bank stores its images: the storage dtypes and the mapping of [-1, 1] onto them."""

from __future__ import annotations

import numpy as np

__all__ = ["DTYPES", "decode_images", "encode_images"]

#: Storage dtypes of a bank's images; uint8 maps [-1, 1] linearly to 0..255.
DTYPES = ("float16", "float32", "uint8")


def encode_images(x: np.ndarray, dtype: str) -> np.ndarray:
    """Images in [-1, 1] to the bank's storage dtype."""
    if dtype == "uint8":
        return np.rint((x + 1.0) * 127.5).astype(np.uint8)
    return x.astype(dtype)


def decode_images(x: np.ndarray) -> np.ndarray:
    """Stored images back to float32 in [-1, 1] (the inverse of :func:`encode_images` up to its rounding)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return x.astype(np.float32, copy=False)
