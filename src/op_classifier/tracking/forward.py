"""The served model's forward pass: raw pixels checked, then the Keras model chunk by chunk; no MLflow.

Both wrappers of a logged model use it: the pyfunc MLflow loads (pyfunc.PixelClassifier) and the model
`op-classifier serve` holds (served.ServedModel). It is serving logic, kept in tracking/ because the
pyfunc must stay at the path logged models name (op_classifier.tracking...) and tracking imports no serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from op_classifier.errors import DataError

CHUNK = 64  # images per forward pass: a large request must not take all the memory at once


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


def serving_function(model: keras.Model, shape: tuple[int, ...], chunk: int) -> Callable[[np.ndarray], np.ndarray]:
    """float32 (batch, classes) probabilities of (batch, *shape) pixels (any real dtype), chunk images a call.

    Under TensorFlow, the model traced once into a graph for any batch size (a tf.function with an input
    signature, traced here): about 0.5 ms a call less than predict_on_batch, which converts and checks
    its input on every call, and never retraced. Other backends call predict_on_batch.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        graph = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *shape), tf.float32)]
        ).get_concrete_function()

        def call(x: np.ndarray) -> np.ndarray:
            return graph(tf.constant(x, tf.float32)).numpy()
    else:
        call = model.predict_on_batch

    def forward(images: np.ndarray) -> np.ndarray:
        # float32 one chunk at a time: a large batch of uint8 images never doubles as floats at once.
        parts = [
            np.asarray(call(images[i : i + chunk].astype(np.float32, copy=False))) for i in range(0, len(images), chunk)
        ]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(np.float32, copy=False)

    return forward
