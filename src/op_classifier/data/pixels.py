"""Raw pixels as a client sends them, checked: numpy only, so that a LiteRT server never loads Keras."""

from __future__ import annotations

from typing import Any

import numpy as np

from op_classifier.errors import DataError


def checked_pixels(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """data as float32 (batch, *shape) raw pixels, or a DataError saying what is wrong.

    Every message is short and quotes no data: a server sends it back to its client.
    """
    expected = f"(batch, {', '.join(map(str, shape))}) raw RGB pixel values 0..255"
    try:
        found = np.asarray(data)  # its own dtype first: float32 would take "7", None and True as numbers
    except (TypeError, ValueError):  # numpy refuses ragged nested lists
        raise DataError(f"instances must be a regular array: {expected}") from None
    if found.dtype == bool:
        raise DataError(f"instances contain true/false, not pixels: {expected}")
    if found.dtype.kind not in "iuf":  # strings, JSON null (object), ragged lists of lists (object)
        raise DataError(f"instances must be a regular array of numbers (no strings or null): {expected}")
    if found.ndim != len(shape) + 1 or found.shape[1:] != shape or len(found) == 0:
        got = str(found.shape) if found.ndim <= len(shape) + 2 else f"{found.ndim} axes"
        raise DataError(f"instances have shape {got}, expected {expected}")
    images = found.astype("float32", copy=False)
    if not np.isfinite(images).all():  # JSON NaN and Infinity (Python's json reads them); huge numbers overflow
        raise DataError(f"instances contain NaN or infinite values: {expected}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise DataError(f"instances range {low:g}..{high:g}, expected {expected}")
    return images
