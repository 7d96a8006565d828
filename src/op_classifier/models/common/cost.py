"""A model's multiply-adds for one image: what the search's parsimonious pick compares."""

from __future__ import annotations

import math

import keras


def multiply_adds(model: keras.Model) -> int:
    """The multiply-adds of one forward pass of one image through the model's convolutions and dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += multiply_adds(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            total += _positions(layer) * math.prod(layer.kernel_size) * layer.output.shape[-1]
        elif isinstance(layer, keras.layers.Conv2D):
            fan_in = math.prod(layer.kernel_size) * layer.input.shape[-1] // layer.groups
            total += _positions(layer) * fan_in * layer.output.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(layer.input.shape[1:]) * layer.units
    return int(total)


def _positions(layer: keras.layers.Layer) -> int:
    """The output's spatial positions (height x width)."""
    return math.prod(layer.output.shape[1:-1])
