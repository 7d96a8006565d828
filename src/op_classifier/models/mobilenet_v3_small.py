"""keras.applications' MobileNetV3Small as a backbone (ImageNet weights through Keras's own download and cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from op_classifier.models import pretrained, register

if TYPE_CHECKING:
    import keras


@dataclass
class MobileNetV3Small(pretrained.Pretrained):
    """conf/model/mobilenet_v3_small.yaml: weights, dropout before the head, input side."""


@register("mobilenet_v3_small", MobileNetV3Small)
def build_model(
    num_classes: int,
    image_size: int,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
    flip: bool = True,
    rotation: float = 0.1,
    zoom: float = 0.2,
    resize: int | None = 96,
    seed: int | None = None,
) -> keras.Model:
    """MobileNetV3Small under global pooling, dropout and one sigmoid per class; raw 0..255 pixels in."""
    return pretrained.build(
        "MobileNetV3Small",  # resolved in keras.applications when built
        "mobilenet_v3_small",
        num_classes,
        image_size,
        weights,
        dropout,
        flip,
        rotation,
        zoom,
        resize,
        seed,
    )
