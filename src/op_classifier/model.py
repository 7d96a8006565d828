"""The classifier: pure Keras 3, backend-agnostic, no I/O, no tracking, no config loading."""

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


def build_model(
    num_classes: int,
    image_size: int,
    filters: Sequence[int] = (15, 30, 60),
    kernel_size: int = 3,
    units: int = 128,
    dropout: float = 0.2,
    l2: float = 0.01,
    flip: bool = True,
    rotation: float = 0.2,
    zoom: float = 0.1,
    resize: int | None = None,
    seed: int | None = None,
) -> keras.Model:
    """The original notebook's CNN: raw 0..255 RGB pixels in, one sigmoid probability per class out.

    With `resize`, the model first scales its input down to resize x resize: the served contract
    (image_size pixels) stays, the convolutions cost (resize / image_size)^2 as much.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Resizing(resize, resize)(inputs) if resize and resize != image_size else inputs
    x = layers.Rescaling(1.0 / 255)(x)
    # Augmentation lives in the model so the served model takes raw pixels; it is idle at inference.
    if flip:
        x = layers.RandomFlip("horizontal", seed=seed)(x)
    if rotation:
        x = layers.RandomRotation(rotation, seed=seed)(x)
    if zoom:
        x = layers.RandomZoom(zoom, seed=seed)(x)
    for i, width in enumerate(filters):
        x = layers.Conv2D(width, kernel_size, activation="relu")(x)
        if i == 0:  # the original normalised before and after its first pooling
            x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D()(x)
        x = layers.BatchNormalization()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(units, activation="relu", kernel_regularizer=keras.regularizers.L2(l2))(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    # float32 output even under mixed precision, so probabilities stay exact.
    outputs = layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


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


def compile_model(model: keras.Model, learning_rate: float, class_names: Sequence[str]) -> keras.Model:
    """Adam and binary cross-entropy on multi-hot targets: each class an independent probability."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=metrics(class_names),
    )
    return model
