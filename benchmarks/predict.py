"""Prediction speed: the `op-classifier predict` path (decode + predict) beside the model alone.

Usage: python benchmarks/predict.py [--model DIR] [--images 256] [--photo 640x480] [--batch-size 64]

Without --model it times an untrained build_model(num_classes=4, image_size=180, resize=96) (the
default architecture; weights do not change the speed). Prints:
- throughput in images/s over --images JPEG files: the CLI path (predict.predict_items: decode by
  content, resize, batch, predict), decoding alone, and the model alone (model.predict on a ready
  float32 array, and model.predict_on_batch per batch, which the CLI path uses);
- one-image latency after warm-up, the median of 30 calls: the CLI path for one file vs the model
  alone on one ready array (model(x, training=False), which runs eagerly, and the compiled calls);
- the wall time of the whole command as a user runs it (process start, imports, model load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLI = str(Path(sys.executable).parent / "op-classifier")
CLASSES = ["Luffy", "Nami", "Sanji", "Zoro"]


def make_model(folder: Path) -> Path:
    """An untrained default-architecture model saved as the train stage lays out its folder."""
    from op_classifier.models.seed_cnn import build_model

    build_model(num_classes=len(CLASSES), image_size=180, resize=96, seed=0).save(folder / "model.keras")
    (folder / "run.json").write_text(json.dumps({"classes": CLASSES, "image_size": 180}), encoding="utf-8")
    return folder


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """count JPEGs of size: smooth random colour fields plus grain, about the bytes of a real photo."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 8, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(field, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def best_rate(count: int, action: Callable[[], object], repeats: int) -> float:
    """Images per second of the fastest of `repeats` runs (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return count / min(times)


def median_ms(action: Callable[[], object], calls: int = 30) -> float:
    """Median milliseconds of one call, after three warm-up calls."""
    for _ in range(3):
        action()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    """Parse the arguments; measure in a temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained model folder (default: an untrained default-architecture model)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--photo", default="640x480", help="size of the generated JPEGs, WxH")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="op-bench-predict-") as tmp:
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, work: Path) -> None:
    """Time every path on generated photos; print the figures."""
    from op_classifier.serving import predict

    model_dir = Path(args.model) if args.model else make_model(work)
    files = make_photos(work / "photos", args.images, tuple(int(side) for side in args.photo.split("x")))
    classifier = predict.load_classifier(str(model_dir))
    side = classifier.image_size
    ready = np.random.default_rng(1).uniform(0, 255, (len(files), side, side, 3)).astype("float32")
    rates = throughputs(classifier, files, ready, args.batch_size, args.repeats)
    latency = latencies(classifier, files[0], ready[:1])
    started = time.perf_counter()
    subprocess.run(
        [CLI, "predict", str(work / "photos"), "--model", str(model_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    command = time.perf_counter() - started

    model = args.model or "untrained build_model(num_classes=4, image_size=180, resize=96)"
    print(
        f"model {model}, input {side}x{side}; {len(files)} JPEGs of {args.photo}, batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"throughput (best of {args.repeats}):")
    for name, rate in rates.items():
        print(f"  {name:42s} {rate:8.1f} images/s")
    print("one-image latency (median of 30, after warm-up):")
    for name, ms in latency.items():
        print(f"  {name:42s} {ms:8.1f} ms")
    print(f"the whole command (`op-classifier predict` on the {len(files)} files): {command:.1f} s")


def throughputs(classifier: Any, files: list[str], ready: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Images/s: the CLI path, decoding alone, and the model alone on ready arrays."""
    from op_classifier.data.images import load_image
    from op_classifier.defaults import MAX_IMAGE_PIXELS
    from op_classifier.serving import predict

    model, n = classifier.model, len(files)

    def cli_path() -> None:
        list(predict.predict_items(classifier, files, batch))

    def on_batches() -> None:
        for i in range(0, n, batch):
            model.predict_on_batch(ready[i : i + batch])

    def decode() -> None:
        for file in files:
            load_image(Path(file), classifier.image_size, MAX_IMAGE_PIXELS)

    cli_path(), model.predict(ready[:batch], batch_size=batch, verbose=0), on_batches()  # warm-up: tracing
    return {
        "CLI path (decode + predict)": best_rate(n, cli_path, repeats),
        "decode only (load_image, one thread)": best_rate(n, decode, repeats),
        "model only: model.predict": best_rate(n, lambda: model.predict(ready, batch_size=batch, verbose=0), repeats),
        "model only: predict_on_batch per batch": best_rate(n, on_batches, repeats),
    }


def latencies(classifier: Any, file: str, one: np.ndarray) -> dict[str, float]:
    """Milliseconds for one image: the CLI path on a file, the model alone on a ready array."""
    from op_classifier.serving import predict

    model = classifier.model
    return {
        "CLI path, one file": median_ms(lambda: list(predict.predict_items(classifier, [file], 64))),
        "model(x, training=False), one ready array": median_ms(lambda: model(one, training=False)),
        "model.predict_on_batch, one ready array": median_ms(lambda: model.predict_on_batch(one)),
        "model.predict, one ready array": median_ms(lambda: model.predict(one, verbose=0)),
    }


if __name__ == "__main__":
    main()
