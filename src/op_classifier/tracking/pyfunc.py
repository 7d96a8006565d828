"""PixelClassifier: op-classifier's model as MLflow holds it, a pyfunc checking raw pixels.

logged_model.py logs it as code; models logged by earlier versions name it as
op_classifier.tracking.served.PixelClassifier or op_classifier.tracking.PixelClassifier, and both
names still resolve (served.py imports it, the package's __getattr__ returns it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel  # the served wrapper's base class must exist at import

from op_classifier.data.pixels import checked_pixels
from op_classifier.errors import DataError
from op_classifier.models.common.saving import load_model
from op_classifier.tracking.forward import CHUNK


class PixelClassifier(PythonModel):
    """The served model: checks (batch, S, S, 3) raw 0..255 pixels, answers per-class probabilities."""

    ARTIFACT = "keras_model"
    CHUNK = CHUNK

    def load_context(self, context: Any) -> None:
        """Load the Keras model (without its training metrics, which serving never needs)."""
        self.model = load_model(context.artifacts[self.ARTIFACT])
        self.shape = tuple(self.model.input_shape[1:])

    # model_input stays np.ndarray, a hint MLflow derives no schema from: a type-hint schema would
    # make the server accept only `{"inputs": ...}`, not TensorFlow Serving's `{"instances": ...}`.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Per-class probabilities, (batch, classes); a bad input raises a 400-mapped MlflowException."""
        from mlflow.exceptions import MlflowException

        try:
            images = checked_pixels(model_input, self.shape)
        except DataError as error:  # MLflow's scoring server answers INVALID_PARAMETER_VALUE with a 400
            raise MlflowException.invalid_parameter_value(str(error)) from None
        chunks = [self.model.predict_on_batch(images[i : i + self.CHUNK]) for i in range(0, len(images), self.CHUNK)]
        return np.concatenate([np.asarray(c) for c in chunks]).astype("float32")
