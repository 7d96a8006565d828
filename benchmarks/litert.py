"""What a LiteRT file costs and saves: size, one-image latency and throughput, side by side in one run.

Usage (after `make run`): python benchmarks/litert.py [--model experiments/model] [--images 256] [--threads 2]

For the trained model folder (model.keras, saved_model/1 and the prepared data beside them) it times the
Keras model (predict_on_batch), TensorFlow's SavedModel (the serving_default signature TensorFlow Serving
runs) and LiteRT files converted here as `op-classifier export` converts them (float32, float16, int8
calibrated on the training split), on the prepared test images. Prints one Markdown table: size on
disk, the median one-image latency over 50 calls after warm-up, images/s over --images images in
batches of 32, and top-1 agreement with Keras.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the converter and the SavedModel are TensorFlow's

BATCH = 32
CALLS = 50


def folder_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def latency_ms(call: Callable[[np.ndarray], object], image: np.ndarray) -> float:
    """Median milliseconds of one-image calls, after 5 warm-up calls."""
    for _ in range(5):
        call(image)
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        call(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def throughput(call: Callable[[np.ndarray], object], images: np.ndarray) -> float:
    """Images per second over all images in batches of BATCH (best of two passes)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for i in range(0, len(images), BATCH):
            call(images[i : i + BATCH])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    """Convert, time and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="experiments/model", help="a trained model folder (default: %(default)s)")
    parser.add_argument("--prepared", default="data/prepared", help="the prepared data (default: %(default)s)")
    parser.add_argument("--images", type=int, default=256, help="images timed for throughput (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="LiteRT's threads (default: the cores)")
    args = parser.parse_args()

    import op_classifier  # noqa: F401  (first: importing the package quiets TensorFlow's start-up)

    tf = importlib.import_module("tensorflow")
    from op_classifier.data.prepared import load_split
    from op_classifier.models.common.saving import load_model
    from op_classifier.serving import export, litert

    folder = Path(args.model)
    if not (folder / "model.keras").is_file():
        sys.exit(f"error: {folder / 'model.keras'} not found: run `make run` first")
    model = load_model(folder / "model.keras")
    test = np.asarray(load_split(Path(args.prepared), "test").images, np.float32)
    images = np.concatenate([test] * (args.images // len(test) + 1))[: args.images]
    train = load_split(Path(args.prepared), "train").images
    calibration = np.asarray(train[np.linspace(0, len(train) - 1, min(200, len(train))).astype(int)], np.float32)
    saved = tf.saved_model.load(str(folder / "saved_model" / "1")).signatures["serving_default"]
    reference = np.asarray(model.predict_on_batch(test))

    rows = [
        ("Keras (.keras)", folder_size(folder / "model.keras"), lambda x: model.predict_on_batch(x)),
        (
            "SavedModel (TensorFlow Serving)",
            folder_size(folder / "saved_model"),
            lambda x: next(iter(saved(tf.constant(x)).values())).numpy(),
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in ("none", "float16", "int8"):
            path = Path(tmp) / f"model-{quantize}.tflite"
            data = export.convert(model, quantize, calibration if quantize == "int8" else None)
            path.write_bytes(litert.with_metadata(data, {"classes": [str(i) for i in range(reference.shape[1])]}))
            lite = litert.load(path, threads=args.threads)
            rows.append(
                (f"LiteRT {'float32' if quantize == 'none' else quantize}", path.stat().st_size, lite.predict_on_batch)
            )
        print(f"{len(test)} test images of {test.shape[1]} px, {args.images} timed; LiteRT on {args.threads} threads\n")
        print("| model | size | one image (median ms) | images/s (batches of 32) | top-1 agreement with Keras |")
        print("|---|---|---|---|---|")
        for name, size, call in rows:
            agreement = float((np.asarray(call(test)).argmax(1) == reference.argmax(1)).mean())
            print(
                f"| {name} | {size / 2**20:.2f} MiB | {latency_ms(call, test[:1]):.2f} | "
                f"{throughput(call, images):.0f} | {agreement:.1%} |"
            )


if __name__ == "__main__":
    main()
