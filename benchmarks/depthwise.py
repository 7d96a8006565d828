"""EfficientNet-Lite0's fine-tuning step on a CPU: TensorFlow, JAX with XLA's convolutions, and JAX with
what models.common runs there instead (depthwise as shifted products, jax-ml/jax#13800; 1 x 1 as matmul).

Usage: python benchmarks/depthwise.py [--side 224] [--batch 32] [--steps 5] [--layers 60]
Each backend runs in its own process, one after the other; prints ms per train step and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = """
import json, sys, time
import numpy as np
import keras
from op_classifier.models.common import convolutions
from op_classifier.models.common.compile import compile_model
from op_classifier.models.efficientnet_lite import build_model
from op_classifier.training.phases import unfreeze_top

side, batch, steps, top, plain = json.loads(sys.argv[1])
if plain:  # XLA's own convolutions, as Keras runs them
    convolutions._jax_on_cpu = lambda layer: False
model = build_model(4, side, resize=None, weights=None, seed=1)
unfreeze_top(model.get_layer("backbone"), top)
compile_model(model, 1e-4, ["a", "b", "c", "d"])
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, size=(batch, side, side, 3)).astype("float32")
y = np.eye(4, dtype="float32")[rng.integers(0, 4, batch)]
model.train_on_batch(x, y)  # compiles
started = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(x, y)
print("MS", 1000 * (time.perf_counter() - started) / steps)
"""


def step_ms(backend: str, plain: bool, args: argparse.Namespace) -> float:
    """One fresh process under `backend`: the mean milliseconds of a fine-tuning step."""
    setting = json.dumps([args.side, args.batch, args.steps, args.layers, plain])
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-c", PROBE, setting], env=env, capture_output=True, text=True, check=True)
    return float(next(line for line in done.stdout.splitlines() if line.startswith("MS "))[3:])


def main() -> None:
    """Time the three ways, print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=60, help="top backbone layers trainable (train.fine_tune_layers)")
    args = parser.parse_args()
    tf = step_ms("tensorflow", False, args)
    grouped = step_ms("jax", True, args)
    shifted = step_ms("jax", False, args)
    print(
        f"lite0 fine-tuning step, {args.side} px, batch {args.batch}, top {args.layers} layers ({os.cpu_count()} CPUs)"
    )
    print(f"tensorflow                     {tf:8.0f} ms")
    print(f"jax, XLA convolutions         {grouped:8.0f} ms  ({grouped / tf:.1f}x tensorflow)")
    print(
        f"jax, shifted / matmul (ours)  {shifted:8.0f} ms  ({shifted / tf:.1f}x tensorflow, {grouped / shifted:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
