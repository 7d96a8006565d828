"""A LiteRT (.tflite) model as predict runs it: LiteRT's interpreter, no TensorFlow, no Keras.

`op-classifier export` writes the file (serving/export.py) with its class list inside: a Model
metadata entry named METADATA_NAME holding JSON {"classes": [...], "image_size": S, "quantize": ...}; its
classes must be unique, non-empty, printable names, one per output (else the file is refused in one line).
Its input is the served contract of every model here: (batch, S, S, 3) float32 raw 0..255 pixels, one
sigmoid per class out, whatever the quantisation (an int8 file quantises at its edges).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier import quiet
from op_classifier.errors import DataError, first_line

SUFFIX = ".tflite"
METADATA_NAME = "op_classifier"
FLATBUFFER_ID = b"TFL3"  # bytes 4..8 of every LiteRT model file


class LiteRTError(DataError):
    """A file given as a LiteRT model is not one this project can run: bad input, exit 2."""

    exit_code = 2


def with_metadata(model: bytes, payload: dict[str, Any]) -> bytes:
    """The model with our metadata entry set to payload (replacing one of that name)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(payload, sort_keys=True).encode(), dtype=np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata = [m for m in tree.metadata or [] if m.name.decode() != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def metadata(model: bytes) -> dict[str, Any] | None:
    """Our metadata entry of a model file, or None when it has none."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name().decode() != METADATA_NAME:
            continue
        buffer = root.Buffers(entry.Buffer())
        offset = buffer.Offset()  # files over 2 GB keep their buffers after the flatbuffer
        data = model[offset : offset + buffer.Size()] if offset else buffer.DataAsNumpy().tobytes()
        return json.loads(data)
    return None


@dataclass
class LiteRTModel:
    """A .tflite file on LiteRT's interpreter, called as predict calls a Keras model."""

    path: Path
    classes: list[str]
    image_size: int
    runner: Any  # the interpreter's signature runner: it resizes the batch dimension itself
    input_name: str

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) probabilities of (batch, S, S, 3) pixels of any real dtype."""
        outputs = self.runner(**{self.input_name: np.asarray(images, np.float32)})
        return np.asarray(next(iter(outputs.values())), np.float32)


def load(path: Path, threads: int | None = None) -> LiteRTModel:
    """A .tflite file that `op-classifier export` wrote, ready to predict; LiteRTError in one line if not."""
    try:
        model = path.read_bytes()
    except OSError as error:
        raise LiteRTError(f"{path}: cannot read it ({error.strerror or error})") from None
    if model[4:8] != FLATBUFFER_ID:
        raise LiteRTError(f"{path}: not a LiteRT model (no TFL3 flatbuffer)")
    try:
        described = metadata(model)
    except Exception as error:  # a damaged flatbuffer raises many types
        raise LiteRTError(f"{path}: a damaged LiteRT model ({first_line(error)})") from None
    if not described or not isinstance(described.get("classes"), list):
        raise LiteRTError(f"{path}: no class list inside: write it with `op-classifier export --format litert`")
    unfit = class_list_problem(described["classes"])
    if unfit:
        raise LiteRTError(
            f"{path}: its class list does not name the outputs ({unfit}): write it again with "
            "`op-classifier export --format litert`"
        )
    from ai_edge_litert.interpreter import Interpreter

    try:
        with quiet.unless_verbose():  # the interpreter's note on its CPU delegate, made at the first call
            interpreter = Interpreter(model_content=model, num_threads=threads)
            runner = interpreter.get_signature_runner()
            ((input_name, spec),) = runner.get_input_details().items()
            loaded = LiteRTModel(path, list(described["classes"]), int(spec["shape_signature"][1]), runner, input_name)
            outputs = loaded.predict_on_batch(np.zeros((1, loaded.image_size, loaded.image_size, 3), np.float32))
    except Exception as error:  # the interpreter refuses what it cannot run (ValueError, RuntimeError)
        raise LiteRTError(f"{path}: LiteRT cannot run it ({first_line(error)})") from None
    if outputs.shape != (1, len(loaded.classes)):
        raise LiteRTError(f"{path}: {outputs.shape[-1]} outputs but {len(loaded.classes)} class names inside")
    return loaded


def class_list_problem(classes: list[Any]) -> str | None:
    """Why a class list cannot name a model's outputs: a name that is no string, empty, repeated or holding
    a character that does not print (a newline would forge a line of predict's); None when it can."""
    seen = set()
    for index, name in enumerate(classes):
        if not isinstance(name, str):
            return f"class {index} is {type(name).__name__}, not a name"
        if not name.strip():
            return f"class {index} is empty"
        if not name.isprintable():
            return f"class {index} ({name[:40]!r}) does not print"
        if name in seen:
            return f"{name[:40]!r} is named twice"
        seen.add(name)
    return None


def model_file(folder: Path) -> Path | None:
    """The one .tflite file in a folder, None when there is none; LiteRTError when there are several."""
    found = sorted(folder.glob(f"*{SUFFIX}"))
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise LiteRTError(f"{folder} holds {len(found)} LiteRT models ({names}): name one with --model")
    return found[0] if found else None
