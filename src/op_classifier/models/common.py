"""What every architecture shares: input scaling, augmentation, the head, metrics and compilation.

Pure Keras 3, backend-agnostic, no I/O, no tracking, no config loading."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops

from op_classifier.metric_names import ACCURACY, AUC, PER_CLASS, per_class


@keras.saving.register_keras_serializable(package="op_classifier")
class TopOneAccuracy(keras.metrics.Metric):
    """Top-1 accuracy on single-label rows (the original's metric); multi-label rows are ignored."""

    def __init__(self, name: str = ACCURACY, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.correct = self.add_weight(name="correct", initializer="zeros")
        self.count = self.add_weight(name="count", initializer="zeros")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.cast(y_true, "float32")
        single = ops.cast(ops.equal(ops.sum(y_true, axis=-1), 1.0), "float32")
        top = ops.expand_dims(ops.argmax(y_pred, axis=-1), axis=-1)
        hit = ops.squeeze(ops.take_along_axis(y_true, top, axis=-1), axis=-1)
        self.correct.assign_add(ops.sum(hit * single))
        self.count.assign_add(ops.sum(single))

    def result(self) -> Any:
        return ops.divide_no_nan(self.correct, self.count)


def pixels(image_size: int, resize: int | None, rescale: bool = True) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The served input (raw 0..255 RGB at image_size) and its pixels at `resize`, scaled to 0..1
    unless `rescale` is off (pretrained backbones bring their own preprocessing).

    With `resize`, the model first scales its input down: the served contract stays, the layers
    after it cost (resize / image_size)^2 as much.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Resizing(resize, resize)(inputs) if resize and resize != image_size else inputs
    return inputs, layers.Rescaling(1.0 / 255)(x) if rescale else x


def augmentation(x: keras.KerasTensor, flip: bool, rotation: float, zoom: float, seed: int | None) -> keras.KerasTensor:
    """Random augmentation inside the model, so the served model takes raw pixels; idle at inference."""
    if flip:
        x = layers.RandomFlip("horizontal", seed=seed)(x)
    if rotation:
        x = layers.RandomRotation(rotation, seed=seed)(x)
    if zoom:
        x = layers.RandomZoom(zoom, seed=seed)(x)
    return x


def head(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """One independent sigmoid probability per class (an image can show several)."""
    # float32 output even under mixed precision, so probabilities stay exact.
    return layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="probabilities")(x)


def metrics(class_names: Sequence[str]) -> list[keras.metrics.Metric]:
    """Top-1 accuracy, multi-label AUC, and per-class precision and recall at threshold 0.5.

    Named as metric_names.py says (config.py checks train.monitor and tuner.objective against it).
    """
    kinds = {"precision": keras.metrics.Precision, "recall": keras.metrics.Recall}
    by_class = [
        kinds[metric](class_id=i, name=per_class(metric, name))
        for i, name in enumerate(class_names)
        for metric in PER_CLASS
    ]
    return [TopOneAccuracy(), keras.metrics.AUC(multi_label=True, name=AUC), *by_class]


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    class_names: Sequence[str],
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
) -> keras.Model:
    """Adam (or AdamW: decoupled weight decay) and binary cross-entropy on multi-hot targets: each
    class an independent probability."""
    model.compile(
        optimizer=(
            keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
            if optimizer == "adamw"
            else keras.optimizers.Adam(learning_rate)
        ),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=metrics(class_names),
    )
    return model
