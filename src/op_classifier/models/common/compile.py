"""How a model is compiled: the optimizer, the loss on multi-hot targets, the metrics."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from op_classifier.models.common.metrics import metrics


def compile_model(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    class_names: Sequence[str],
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    only: Sequence[str] | None = None,
) -> keras.Model:
    """Adam (or AdamW: decoupled weight decay) and binary cross-entropy on multi-hot targets: each
    class an independent probability. With `only`, just the metrics of those names (and the loss)."""
    chosen = [m for m in metrics(class_names) if only is None or m.name in only]
    model.compile(
        optimizer=(
            keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
            if optimizer == "adamw"
            else keras.optimizers.Adam(learning_rate)
        ),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=chosen,
    )
    return model
