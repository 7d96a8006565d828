"""A saved model's formats: the .keras file loaded back, TensorFlow Serving's SavedModel written."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import keras

from op_classifier.errors import DataError, first_line
from op_classifier.models.common import convolutions, layers, metrics  # noqa: F401  (registers our classes)


def load_model(path: Any) -> keras.Model:
    """A model this package saved, without its compiled training state.

    Its layers and metrics of ours (RandomAffine, TopOneAccuracy, the convolutions) are registered by
    importing their modules, as this one does: a process that loads a model before building one (evaluate under DVC, predict, serve)
    must load it through here, or Keras cannot find RandomAffine (every backend but TensorFlow).
    A file that is not a whole .keras archive is one line saying so (Keras says "File not found")."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: not a whole Keras model file ({first_line(error)}): truncated or damaged?") from None
    if damaged is not None:
        raise DataError(f"{path}: a damaged Keras model file ({damaged} fails its checksum)")
    return keras.saving.load_model(path, compile=False)


def export_saved_model(model: keras.Model, path: Path) -> str:
    """TensorFlow Serving's layout: signature serving_default, (batch, S, S, 3) float32 pixels in."""
    # model.export() traced the random augmentation layers in training mode (outputs differed from
    # predict() by up to 0.57), so the endpoint calls the model with training=False explicitly.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")],
    )
    archive.write_out(str(path), verbose=False)
    return str(path)
