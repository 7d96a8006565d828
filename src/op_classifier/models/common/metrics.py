"""The metrics every model reports, named as metric_names.py says (config.py checks train.monitor and
tuner.objective against them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

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


@keras.saving.register_keras_serializable(package="op_classifier")
class MultiLabelAUC(keras.metrics.AUC):
    """Keras's multi-label ROC AUC, with the same counts accumulated from float tensors only.

    Keras's own update transposes integer bucket indices and maps over the labels; TensorFlow's
    oneDNN then logged `E0000 ... oneDNN supports DT_BOOL only on platforms with AVX-512` in every
    training on a CPU without it. A one-hot of each prediction's bucket and one einsum per count give
    the same confusion counts (tests/test_architectures.py checks them against Keras's).
    """

    def __init__(self, name: str = AUC, **kwargs: Any) -> None:
        kwargs["multi_label"] = True
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if not self._built:
            self._build(y_pred.shape)
        buckets = self.num_thresholds  # evenly spaced, the first at 0 - epsilon: Keras's default
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 0.0, 1.0)
        truth = ops.sign(ops.abs(ops.cast(y_true, "float32")))
        weights = 1.0
        if sample_weight is not None:
            weights = ops.broadcast_to(ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1)), ops.shape(y_pred))
        positive, negative = truth * weights, (1.0 - truth) * weights
        bucket = ops.one_hot(ops.cast(ops.relu(ops.ceil(y_pred * (buckets - 1)) - 1), "int32"), buckets)

        def above(labels: Any) -> Any:  # per threshold: the labels' weight predicted above it
            per_bucket = ops.einsum("nc,ncb->bc", labels, bucket)
            return ops.flip(ops.cumsum(ops.flip(per_bucket, 0), axis=0), 0)

        tp, fp = above(positive), above(negative)
        self.true_positives.assign(self.true_positives + tp)
        self.false_positives.assign(self.false_positives + fp)
        self.true_negatives.assign(self.true_negatives + ops.sum(negative, axis=0) - fp)
        self.false_negatives.assign(self.false_negatives + ops.sum(positive, axis=0) - tp)


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
    return [TopOneAccuracy(), MultiLabelAUC(), *by_class]
