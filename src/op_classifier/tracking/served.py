"""The logged model as MLflow holds it (a pyfunc checking raw pixels) and as it is served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from mlflow.pyfunc import PythonModel  # the served wrapper's base class must exist at import

from op_classifier.errors import first_line
from op_classifier.models.common import load_model
from op_classifier.tracking import TrackingError
from op_classifier.tracking.store import client_env


class PixelClassifier(PythonModel):
    """The served model: checks (batch, S, S, 3) raw 0..255 pixels, answers per-class probabilities."""

    ARTIFACT = "keras_model"
    CHUNK = 64  # images per forward pass: a large request must not take all the memory at once

    def load_context(self, context: Any) -> None:
        """Load the Keras model (without its training metrics, which serving never needs)."""
        self.model = load_model(context.artifacts[self.ARTIFACT])
        self.shape = tuple(self.model.input_shape[1:])

    # model_input stays np.ndarray, a hint MLflow derives no schema from: a type-hint schema would
    # make the server accept only `{"inputs": ...}`, not TensorFlow Serving's `{"instances": ...}`.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Per-class probabilities, (batch, classes); a bad input raises a 400-mapped MlflowException."""
        images = _checked_pixels(model_input, self.shape)
        chunks = [self.model.predict_on_batch(images[i : i + self.CHUNK]) for i in range(0, len(images), self.CHUNK)]
        return np.concatenate([np.asarray(c) for c in chunks]).astype("float32")


def _checked_pixels(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """data as float32 (batch, *shape) raw pixels, or an INVALID_PARAMETER_VALUE error saying what is wrong.

    Every message is short and quotes no data: a server sends it back to its client.
    """
    from mlflow.exceptions import MlflowException

    expected = f"(batch, {', '.join(map(str, shape))}) raw RGB pixel values 0..255"
    try:
        found = np.asarray(data)  # its own dtype first: float32 would take "7", None and True as numbers
    except (TypeError, ValueError):  # numpy refuses ragged nested lists
        raise MlflowException.invalid_parameter_value(f"instances must be a regular array: {expected}") from None
    if found.dtype == bool:
        raise MlflowException.invalid_parameter_value(f"instances contain true/false, not pixels: {expected}")
    if found.dtype.kind not in "iuf":  # strings, JSON null (object), ragged lists of lists (object)
        raise MlflowException.invalid_parameter_value(
            f"instances must be a regular array of numbers (no strings or null): {expected}"
        )
    if found.ndim != len(shape) + 1 or found.shape[1:] != shape or len(found) == 0:
        got = str(found.shape) if found.ndim <= len(shape) + 2 else f"{found.ndim} axes"
        raise MlflowException.invalid_parameter_value(f"instances have shape {got}, expected {expected}")
    images = found.astype("float32", copy=False)
    if not np.isfinite(images).all():  # JSON NaN and Infinity (Python's json reads them); huge numbers overflow
        raise MlflowException.invalid_parameter_value(f"instances contain NaN or infinite values: {expected}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise MlflowException.invalid_parameter_value(f"instances range {low:g}..{high:g}, expected {expected}")
    return images


class ServedModel:
    """A logged pyfunc image model as `op-classifier serve` calls it: the pixels checked first.

    An op-classifier model (PixelClassifier) runs through serving_function, its Keras model traced once
    into one graph; any other pyfunc with a (batch, S, S, 3) tensor input through its own predict.
    """

    def __init__(self, model: Any, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = shape  # of one image, (S, S, 3)
        keras_model = _keras_model_of(model)
        self.forward = (
            serving_function(keras_model, shape, PixelClassifier.CHUNK)
            if keras_model is not None
            else lambda images: np.asarray(model.predict(images.astype(np.float32, copy=False)))
        )

    def predict(self, instances: Any) -> np.ndarray:
        """(batch, classes) probabilities of (batch, *shape) raw 0..255 pixels, nested lists or an array.

        A bad input raises DataError with _checked_pixels' short message.
        """
        from mlflow.exceptions import MlflowException

        from op_classifier.errors import DataError

        try:
            images = _checked_pixels(instances, self.shape)
        except MlflowException as error:
            raise DataError(error.message) from None
        return self.forward(images)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) probabilities of decoded uint8 (batch, *shape) images (images.decode_image's)."""
        return self.forward(images)


def _keras_model_of(model: Any) -> keras.Model | None:
    """The Keras model itself, or the one inside a loaded op-classifier pyfunc; None for any other pyfunc."""
    if isinstance(model, keras.Model):
        return model
    try:
        inner = model.unwrap_python_model()
    except Exception:  # not a Python-function model (another flavor): MLflow raises its own error
        return None
    return getattr(inner, "model", None) if isinstance(inner, PixelClassifier) else None


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


def served_model(model_uri: str, store: str, trust_code: bool = False) -> ServedModel:
    """The model that model_uri (models:/, runs:/, a path) names in store, loaded to serve.

    An op-classifier model loads its Keras file only: no Python file or pickle of its folder runs, so one
    swapped in runs nothing. Any other pyfunc runs its code when loaded (a pickle, or its model code):
    refused unless trust_code (`serve --trust-code`)."""
    import tempfile

    client_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")  # no download progress bar in the server's log
    import mlflow

    try:
        # Downloaded with the store named, not the process-wide one. The Keras model is in memory once
        # loaded, so the files go.
        with tempfile.TemporaryDirectory(prefix="op-classifier-serve-") as tmp:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=model_uri, dst_path=tmp, tracking_uri=store, registry_uri=store
                )
            )
            keras_file = keras_artifact(local)
            if keras_file is None:
                _check_present(local, model_uri, store)
            if keras_file is None and not trust_code:
                raise TrackingError(
                    f"{model_uri} is not an op-classifier model: loading it runs its Python code "
                    f"({_python_model_of(local)}); serve it with --trust-code only if you trust where it came from"
                )
            model = load_model(keras_file) if keras_file is not None else mlflow.pyfunc.load_model(str(local))
    except TrackingError:
        raise
    except Exception as error:  # MLflow raises many types for a missing or broken model
        raise TrackingError(f"cannot load {model_uri} from {store}: {first_line(error)}") from None
    shape = _input_shape(model)
    if shape is None:
        raise TrackingError(f"{model_uri} does not take one (batch, S, S, 3) image tensor: not a model to serve")
    try:
        served = ServedModel(model, shape)
        served.forward(np.zeros((1, *served.shape), np.float32))  # the first call's one-time costs, before serving
    except Exception as error:  # a model that cannot take its own schema's input
        raise TrackingError(f"cannot run {model_uri} on its input schema: {first_line(error)}") from None
    return served


def _pyfunc_flavor(folder: Path) -> dict[str, Any]:
    """The python_function flavor of a model folder's MLmodel; empty when there is none to read."""
    import yaml

    try:
        flavor = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    return flavor if isinstance(flavor, dict) else {}


def keras_artifact(folder: Path) -> Path | None:
    """The Keras file of a logged op-classifier model (PixelClassifier's artifact), read from its MLmodel."""
    try:
        path = folder / _pyfunc_flavor(folder)["artifacts"][PixelClassifier.ARTIFACT]["path"]
    except (KeyError, TypeError):
        return None
    return (
        path if path.suffix == ".keras" and path.is_file() and path.resolve().is_relative_to(folder.resolve()) else None
    )


def _check_present(folder: Path, model_uri: str, store: str) -> None:
    """A TrackingError when the model's files are gone (its artifacts deleted, or never logged): said as
    such, not as a model of another kind that --trust-code would load."""
    where = f" in {store}" if ":/" in model_uri else ""  # a folder given as --model is no store's
    again = "serve another version, or train and register one again (`make run`)"
    if not (folder / "MLmodel").is_file():
        raise TrackingError(f"{model_uri} holds no model (no MLmodel file){where}: its files are gone; {again}")
    try:
        named = _pyfunc_flavor(folder)["artifacts"][PixelClassifier.ARTIFACT]["path"]
    except (KeyError, TypeError):
        return  # not an op-classifier model: one of another kind, for --trust-code to decide on
    if not (folder / named).is_file():
        raise TrackingError(f"{model_uri} holds no model: its Keras file ({named}) is missing{where}; {again}")


def _python_model_of(folder: Path) -> str:
    """What a pyfunc folder's loading would run: its python_model file, or its loader module."""
    flavor = _pyfunc_flavor(folder)
    return str(flavor.get("python_model") or flavor.get("loader_module") or "no readable MLmodel")


def _input_shape(model: Any) -> tuple[int, ...] | None:
    """(S, S, 3) of a Keras model's input or of a pyfunc's one tensor input; None for anything else."""
    if isinstance(model, keras.Model):
        dims = tuple(model.input_shape)
    else:
        schema = model.metadata.get_input_schema()
        ok = schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1
        dims = tuple(schema.inputs[0].shape) if ok else ()
    if len(dims) != 4 or any(size is None or size <= 0 for size in dims[1:]):
        return None
    return tuple(int(size) for size in dims[1:])
