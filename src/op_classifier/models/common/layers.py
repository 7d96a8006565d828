"""A model's two ends and what sits behind the input: raw 0..255 pixels in (scaled, resized),
random augmentation (idle at inference), one independent probability per class out."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import layers, ops


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


def probabilities(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """One independent sigmoid probability per class (an image can show several)."""
    # float32 output even under mixed precision, so probabilities stay exact.
    return layers.Dense(num_classes, activation="sigmoid", dtype="float32", name="probabilities")(x)
