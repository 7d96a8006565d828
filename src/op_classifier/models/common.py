"""What every architecture shares: input scaling, augmentation, the head, metrics and compilation.

Pure Keras 3, backend-agnostic, no tracking, no config loading. The only file I/O is at the end: how
a saved model loads (load_model) and how one is exported for TensorFlow Serving and LiteRT."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from op_classifier.errors import DataError, first_line
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


def pixels(image_size: int, resize: int | None, rescale: bool = True) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The served input (raw 0..255 RGB at image_size) and its pixels at `resize`, scaled to 0..1
    unless `rescale` is off (pretrained backbones bring their own preprocessing).

    With `resize`, the model first scales its input down: the served contract stays, the layers
    after it cost (resize / image_size)^2 as much.
    """
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Resizing(resize, resize)(inputs) if resize and resize != image_size else inputs
    return inputs, layers.Rescaling(1.0 / 255)(x) if rescale else x


@keras.saving.register_keras_serializable(package="op_classifier")
class RandomAffine(layers.Layer):
    """Keras's RandomFlip("horizontal"), RandomRotation(rotation) and RandomZoom(zoom) in one resampling.

    Same ranges as those layers (an angle of up to `rotation` x 360 degrees either way, a zoom of
    1 +- `zoom` on both axes about the centre, half the images mirrored, bilinear, reflect padding),
    drawn per image from one seeded generator; the identity at inference.
    """

    def __init__(self, flip: bool, rotation: float, zoom: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flip, self.rotation, self.zoom, self.seed = flip, rotation, zoom, seed
        self.generator = keras.random.SeedGenerator(seed)

    def draw(self, batch_size: Any) -> tuple[Any, Any, Any]:
        """One draw per image: the mirror sign (-1 or 1), the angle in radians and the zoom factor."""
        shape = (batch_size,)
        mirror = keras.random.uniform(shape, seed=self.generator) < 0.5
        sign = ops.where(mirror, -1.0, 1.0) if self.flip else ops.ones(shape)
        turn = self.rotation * 2 * math.pi
        angle = keras.random.uniform(shape, -turn, turn, seed=self.generator)
        scale = keras.random.uniform(shape, 1 - self.zoom, 1 + self.zoom, seed=self.generator)
        return sign, angle, scale

    @staticmethod
    def matrices(sign: Any, angle: Any, scale: Any, height: int, width: int) -> Any:
        """ops.image.affine_transform's rows (output pixel -> input pixel): mirror . rotate . zoom about the centre."""
        cos, sin = ops.cos(angle), ops.sin(angle)
        a0, a1 = sign * scale * cos, -sign * scale * sin
        b0, b1 = scale * sin, scale * cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2, b2 = cx - a0 * cx - a1 * cy, cy - b0 * cx - b1 * cy
        zero = ops.zeros_like(angle)
        return ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        images = ops.cast(images, self.compute_dtype)
        height, width = images.shape[1], images.shape[2]
        transform = self.matrices(*self.draw(ops.shape(images)[0]), height, width)
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "flip": self.flip,
            "rotation": self.rotation,
            "zoom": self.zoom,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="op_classifier")
class DepthwiseConv2D(layers.DepthwiseConv2D):
    """Keras's depthwise convolution, the same weights and output; under JAX on a CPU, k x k shifted products.

    XLA's grouped convolution is slow on a CPU (jax-ml/jax#13800): a fine-tuning step of
    EfficientNet-Lite0 took 12 times TensorFlow's. Shifted products fuse into a few elementwise loops
    (benchmarks/depthwise.py measures both).
    """

    def call(self, inputs: Any) -> Any:
        plain = self.depth_multiplier == 1 and tuple(self.dilation_rate) == (1, 1)
        if not (plain and _jax_on_cpu(self)):
            return super().call(inputs)
        return _finish(self, shifted_depthwise(inputs, self.kernel, self.strides, self.padding))


@keras.saving.register_keras_serializable(package="op_classifier")
class Conv2D(layers.Conv2D):
    """Keras's convolution, the same weights and output; a 1 x 1 one under JAX on a CPU as a matrix product,
    which XLA runs 3 times faster there than its convolution (benchmarks/depthwise.py)."""

    def call(self, inputs: Any) -> Any:
        pointwise = tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1) and self.groups == 1
        if not (pointwise and tuple(self.dilation_rate) == (1, 1) and _jax_on_cpu(self)):
            return super().call(inputs)
        return _finish(self, ops.matmul(inputs, self.kernel[0, 0]))


def _jax_on_cpu(layer: layers.Layer) -> bool:
    if keras.backend.backend() != "jax" or layer.data_format != "channels_last":
        return False
    import jax  # only under the JAX backend

    return jax.default_backend() == "cpu"


def _finish(layer: layers.Layer, x: Any) -> Any:
    """The convolution's bias and activation, as Keras's own call adds them."""
    x = ops.add(x, layer.bias) if layer.use_bias else x
    return layer.activation(x) if layer.activation is not None else x


def shifted_depthwise(x: Any, kernel: Any, strides: Sequence[int], padding: str) -> Any:
    """A depthwise convolution (channels last, depth multiplier 1) as the sum of its kernel's taps, each
    a strided slice of the padded input times one weight per channel; TensorFlow's "same" padding."""
    (kh, kw), (sh, sw) = kernel.shape[:2], tuple(strides)
    (oh, top, bottom), (ow, left, right) = (
        _extent(size, k, s, padding) for size, k, s in ((x.shape[1], kh, sh), (x.shape[2], kw, sw))
    )
    x = ops.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = 0
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]
            out = out + tap * kernel[i, j, :, 0]
    return out


def _extent(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Output length and the padding before and after, as TensorFlow computes them."""
    if padding == "valid":
        return (size - k) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def augmentation(x: keras.KerasTensor, flip: bool, rotation: float, zoom: float, seed: int | None) -> keras.KerasTensor:
    """Random augmentation inside the model, so the served model takes raw pixels; idle at inference."""
    if not (flip or rotation or zoom):
        return x
    if keras.backend.backend() != "tensorflow":
        # Keras's RandomRotation and RandomZoom declare supports_jit=False, which turns off jit for
        # the whole train step under JAX (2-3x slower fit); one affine layer keeps the step jitted.
        return RandomAffine(flip, rotation, zoom, seed=seed)(x)
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
    return [TopOneAccuracy(), MultiLabelAUC(), *by_class]


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


def load_model(path: Any) -> keras.Model:
    """A model this package saved, without its compiled training state.

    Its layers and metrics of ours (RandomAffine, TopOneAccuracy) are registered by importing this
    module: a process that loads a model before building one (evaluate under DVC, predict, serve)
    must load it through here, or Keras cannot find RandomAffine (every backend but TensorFlow).
    A file that is not a whole .keras archive is one line saying so (Keras says "File not found")."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: not a whole Keras model file ({first_line(error)}): truncated or damaged?") from None
    if damaged is not None:
        raise DataError(f"{path}: a damaged Keras model file ({damaged} fails its checksum)")
    return keras.saving.load_model(path, compile=False)


def export_saved_model(model: keras.Model, path: Path) -> str:
    """TensorFlow Serving's layout: signature serving_default, (batch, S, S, 3) float32 pixels in."""
    # model.export() traced the random augmentation layers in training mode (outputs differed from
    # predict() by up to 0.57), so the endpoint calls the model with training=False explicitly.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")],
    )
    archive.write_out(str(path), verbose=False)
    return str(path)
