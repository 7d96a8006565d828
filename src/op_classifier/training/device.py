"""Where the model trains and in what precision: train.device and train.mixed_precision on this machine."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import keras

from op_classifier.config import TrainConfig
from op_classifier.errors import OpClassifierError


def pick_device(cfg: TrainConfig) -> tuple[AbstractContextManager, str, str]:
    """(scope to build the model in, device description, Keras dtype policy set) from train.device."""
    gpus = _gpus()
    if cfg.device == "gpu" and not gpus:
        raise OpClassifierError("train.device=gpu but no GPU is visible (check the CUDA install: make GPU=1)")
    if cfg.device == "cpu":
        gpus = _hide_gpus()
    policy = precision_policy(cfg.mixed_precision, gpu=bool(gpus))
    keras.mixed_precision.set_global_policy(policy)
    if len(gpus) > 1 and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope(), f"{len(gpus)} GPUs (MirroredStrategy)", policy
    return contextlib.nullcontext(), ("GPU" if gpus else "CPU"), policy


def precision_policy(setting: str, gpu: bool) -> str:
    """The Keras dtype policy for train.mixed_precision (auto, on, off) on this device.

    GPUs compute float16 fast. On a CPU, mixed precision means bfloat16, and `auto` keeps float32: on
    the CPUs we measured, bfloat16 trained slower and no better (docs/decisions.md, benchmarks/precision.py).
    """
    if setting == "off":
        return "float32"
    if gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if setting == "on" else "float32"


def _gpus() -> list[Any]:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    if keras.backend.backend() == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    return []


def _hide_gpus() -> list[Any]:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    return []
