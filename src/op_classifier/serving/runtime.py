"""Which runtime `serve` runs the model on: LiteRT's interpreter where a checked LiteRT file of it exists
or can be made, else Keras.

LiteRT (XNNPACK on the CPU's cores) ran the default EfficientNet-Lite0 3.4 times faster than Keras for one
image, with the same answers (benchmarks/litert.py). The file comes from `op-classifier export --format
litert`: the one already logged for the registered version, else made now by that command in a child
process (the converter is TensorFlow's; this process never imports TensorFlow or Keras on this path).
Export checks the file's answers against the Keras model on the test split; float32 is served only when
they agree as export promises (AGREEMENT), int8 and float16 only as well. Where the file cannot be made or
run (a layer LiteRT lacks, no prepared test split to check it on), `--runtime auto` says why in one line
and serves Keras; `--runtime litert` stops there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier.data.pixels import checked_pixels
from op_classifier.errors import OpClassifierError
from op_classifier.serving import litert
from op_classifier.serving.export import AGREEMENT  # the promise export checks its file against
from op_classifier.tracking import ModelStore

RUNTIMES = ("auto", "litert", "keras")
QUANTIZE = ("none", "float16", "int8")
CHUNK = 64  # images per interpreter call: a large request must not take all the memory at once
EXPORT_SECONDS = 600


class NoLiteRT(OpClassifierError):
    """No LiteRT file of the model can be served: why, in one line."""

    exit_code = 2


class LiteRTServed:
    """A LiteRT file as `serve` calls a model (tracking.Served): pixels checked, calls one at a time."""

    def __init__(self, model: litert.LiteRTModel, quantize: str, threads: int) -> None:
        self.model, self.shape = model, (model.image_size, model.image_size, 3)
        self.runtime = f"LiteRT {_label(quantize)}, {threads} threads"
        self._lock = threading.Lock()  # an interpreter runs one call at a time

    def forward(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) probabilities of (batch, *shape) pixels already checked, any real dtype."""
        with self._lock:
            return np.concatenate(
                [self.model.predict_on_batch(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)]
            )

    def predict(self, instances: Any) -> np.ndarray:
        """(batch, classes) of raw 0..255 pixels, checked first (DataError)."""
        return self.forward(checked_pixels(instances, self.shape))

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(batch, classes) of decoded uint8 images."""
        return self.forward(images)


def _label(quantize: str) -> str:
    return "float32" if quantize == "none" else quantize


def threads() -> int:
    """The CPU cores this process may run on: the interpreter's threads."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def litert_served(model_uri: str, store: ModelStore, quantize: str, overrides: Sequence[str]) -> LiteRTServed:
    """The model on LiteRT: its logged export in that quantisation, or one made now; NoLiteRT saying why not."""
    with tempfile.TemporaryDirectory(prefix="op-classifier-serve-litert-") as tmp:
        found = store.litert_export(model_uri, quantize, Path(tmp))
        if found is not None:
            path, tags = found
            agreement = float(tags.get(f"litert_{quantize}_agreement", "nan"))
        else:
            path = Path(tmp) / f"model-{quantize}{litert.SUFFIX}"
            agreement = float(_export(model_uri, quantize, path, overrides)["agreement"])
        if not agreement >= AGREEMENT[quantize]:  # NaN (no figure) is not a pass either
            raise NoLiteRT(
                f"its LiteRT {_label(quantize)} file agrees with the Keras model on {agreement:.1%} of the test split, "
                f"below {AGREEMENT[quantize]:.0%}"
            )
        count = threads()
        try:
            return LiteRTServed(litert.load(path, threads=count), quantize, count)
        except litert.LiteRTError as error:
            raise NoLiteRT(str(error)) from None


def _export(model_uri: str, quantize: str, out: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """`op-classifier export --format litert` of model_uri into out, in a child process; its summary."""
    command = [sys.executable, "-m", "op_classifier.cli", "export", "--format", "litert"]
    command += ["--quantize", quantize, "--model", model_uri, "--out", str(out), *overrides]
    print(
        f"making a LiteRT {_label(quantize)} file of {model_uri} (op-classifier export, checked on the test split; "
        "logged once per registered version)",
        file=sys.stderr,
        flush=True,
    )
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise NoLiteRT(f"making its LiteRT file took over {EXPORT_SECONDS} s") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        why = errors[-1].removeprefix("error: ") if errors else f"export exited {done.returncode}"
        raise NoLiteRT(f"cannot make its LiteRT file: {why}")
    return json.loads(done.stdout)
