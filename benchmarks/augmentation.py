"""What augmentation costs a training step: the default model with and without it, on this backend and device.

    python benchmarks/augmentation.py                           # TensorFlow, train.batch_size
    KERAS_BACKEND=jax python benchmarks/augmentation.py --batch-size 256
    python benchmarks/augmentation.py model=mobilenet_v3_small  # any architecture (Hydra overrides)

Builds conf/'s default model, or the one the overrides name (architecture, resize, precision as
train.device / train.mixed_precision choose) twice, with `model.augment` as configured and with every
augmentation off, and times `fit` on random uint8 images at data.image_size streamed from a .npy file
as the pipeline streams its prepared split. The two alternate for --rounds rounds; each round
compiles first, then times --steps steps. Prints the model's parameter count, images/s for each, the
augmented step as a multiple of the plain one, and whether Keras could jit the train step (issue 8's
GPU target: >= 20,000 images/s with augmentation, at most 1.3x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from op_classifier import config
from op_classifier.data.stream import ImageStream
from op_classifier.models import get as architecture
from op_classifier.models.common.compile import compile_model
from op_classifier.training import hparams
from op_classifier.training.device import pick_device

REPO = Path(__file__).resolve().parent.parent
OFF = ("model.augment.flip=false", "model.augment.rotation=0", "model.augment.zoom=0")
CLASSES = ["a", "b", "c", "d"]


def timed_fit(overrides: tuple[str, ...], images: Path, labels: np.ndarray, steps: int, batch_size: int) -> dict:
    """One fresh model: compile on a first epoch, then seconds per step over `steps` steps."""
    import keras

    cfg = config.load(overrides, conf_dir=REPO / "conf")
    scope, device, policy = pick_device(cfg.train)
    args, learning_rate = hparams.final_args(cfg.model, cfg.train, {})
    with scope:
        model = architecture(cfg.model.name).build(len(CLASSES), cfg.data.image_size, seed=cfg.seed, **args)
        compile_model(model, learning_rate, CLASSES)
    stream = ImageStream(images, labels, batch_size=batch_size, seed=cfg.seed)
    model.fit(stream, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    params = model.count_params()
    started = time.perf_counter()
    model.fit(stream, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    seconds = (time.perf_counter() - started) / steps
    return {
        "step_ms": seconds * 1000,
        "params": params,
        "jit": bool(model.jit_compile),
        "device": device,
        "policy": policy,
        "backend": keras.backend.backend(),
    }


def main() -> None:
    """Alternate augmented and plain trainings, print the medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=efficientnet_v2_b0")
    args = parser.parse_args()
    overrides = tuple(args.overrides)
    cfg = config.load(overrides, conf_dir=REPO / "conf")
    batch_size = args.batch_size or cfg.train.batch_size
    rows = batch_size * args.steps
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        images = Path(work) / "images.npy"
        side = cfg.data.image_size
        np.save(images, rng.integers(0, 256, (rows, side, side, 3), dtype=np.uint8))
        labels = np.eye(len(CLASSES), dtype=np.float32)[rng.integers(0, len(CLASSES), rows)]
        runs: dict[str, list[dict]] = {"augmented": [], "plain": []}
        for _ in range(args.rounds):
            runs["augmented"].append(timed_fit(overrides, images, labels, args.steps, batch_size))
            runs["plain"].append(timed_fit((*overrides, *OFF), images, labels, args.steps, batch_size))
    first = runs["augmented"][0]
    resize = getattr(cfg.model, "resize", None)
    size = f"{side} px" + (f", resized to {resize} in the model" if resize else "")
    print(f"{first['backend']} on {first['device']}, {first['policy']}, {cfg.model.name} at {size}, batch {batch_size}")
    print(f"  {first['params']:,} parameters")
    median = {kind: statistics.median(r["step_ms"] for r in done) for kind, done in runs.items()}
    for kind, done in runs.items():
        steps = ", ".join(f"{r['step_ms']:.1f}" for r in done)
        print(
            f"  {kind:>9}: {median[kind]:7.1f} ms/step ({batch_size / median[kind] * 1000:,.0f} images/s; "
            f"rounds {steps}), train step jitted: {done[0]['jit']}"
        )
    print(f"  augmented step = {median['augmented'] / median['plain']:.2f}x the plain one")


if __name__ == "__main__":
    main()
