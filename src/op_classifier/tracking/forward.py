"""The served model's forward pass: the Keras model chunk by chunk (data/pixels.py checks the pixels); no MLflow.

Both wrappers of a logged model use it: the pyfunc MLflow loads (pyfunc.PixelClassifier) and the model
`op-classifier serve` holds (served.ServedModel). It is serving logic, kept in tracking/ because the
pyfunc must stay at the path logged models name (op_classifier.tracking...) and tracking imports no serving.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

CHUNK = 64  # images per forward pass: a large request must not take all the memory at once


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
