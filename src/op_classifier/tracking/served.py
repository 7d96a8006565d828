"""The model `op-classifier serve` holds: a logged model loaded from a store, behind the pixel checks.

served_model downloads what a models:/ or runs:/ URI (or a folder) names and loads an op-classifier
model's Keras file only (no code of its folder runs); any other pyfunc only when trusted. ServedModel
answers raw pixels (checked) and decoded images through forward.py's traced forward pass.

PixelClassifier (pyfunc.py) is imported here: logged_model.py, the code every model is logged with,
names it as op_classifier.tracking.served.PixelClassifier, and so do the models logged before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from op_classifier.data.pixels import checked_pixels
from op_classifier.errors import first_line
from op_classifier.models.common.saving import load_model
from op_classifier.tracking.forward import CHUNK, serving_function
from op_classifier.tracking.protocols import TrackingError
from op_classifier.tracking.pyfunc import PixelClassifier
from op_classifier.tracking.store import client_env

__all__ = ["PixelClassifier", "ServedModel", "served_model", "serving_function"]


class ServedModel:
    """A logged pyfunc image model as `op-classifier serve` calls it: the pixels checked first.

    An op-classifier model (PixelClassifier) runs through serving_function, its Keras model traced once
    into one graph; any other pyfunc with a (batch, S, S, 3) tensor input through its own predict.
    """

    def __init__(self, model: Any, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = shape  # of one image, (S, S, 3)
        keras_model = _keras_model_of(model)
        self.runtime = f"Keras ({keras.backend.backend()})" if keras_model is not None else "MLflow pyfunc"
        self._forward = (
            serving_function(keras_model, shape, CHUNK)
            if keras_model is not None
            else lambda images: np.asarray(model.predict(images.astype(np.float32, copy=False)))
        )

    def forward(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) probabilities of (batch, *shape) pixels already checked, any real dtype."""
        return self._forward(images)

    def predict(self, instances: Any) -> np.ndarray:
        """(batch, classes) probabilities of (batch, *shape) raw 0..255 pixels, nested lists or an array.

        A bad input raises DataError with forward.checked_pixels' short message.
        """
        return self.forward(checked_pixels(instances, self.shape))

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
