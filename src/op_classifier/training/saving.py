"""Saving the trained model: model.keras, and the TensorFlow Serving SavedModel beside it."""

from __future__ import annotations

from pathlib import Path

import keras

from op_classifier.models.common.saving import export_saved_model


def save(model: keras.Model, out: Path) -> dict[str, str]:
    """model.keras, and the TensorFlow Serving SavedModel at saved_model/1/ (TensorFlow backend); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    written = {"keras": str(out / "model.keras")}
    if keras.backend.backend() == "tensorflow":
        written["saved_model"] = export_saved_model(model, out / "saved_model" / "1")
    else:
        print(f"note: no SavedModel under the {keras.backend.backend()} backend; export needs TensorFlow")
    return written
