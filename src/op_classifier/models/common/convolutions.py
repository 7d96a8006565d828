"""Keras's convolutions, the same weights and outputs, run under JAX on a CPU as XLA runs them fast."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers, ops


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
