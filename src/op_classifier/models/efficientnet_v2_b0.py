"""keras.applications' EfficientNetV2B0 as a backbone (ImageNet weights through Keras's own download and cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from op_classifier.models import pretrained, register

if TYPE_CHECKING:
    import keras


@dataclass
class EfficientNetV2B0(pretrained.Pretrained):
    """conf/model/efficientnet_v2_b0.yaml: weights, dropout before the head, input side."""


@register("efficientnet_v2_b0", EfficientNetV2B0)
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
    """EfficientNetV2B0 under global pooling, dropout and one sigmoid per class; raw 0..255 pixels in."""
    return pretrained.build(
        "EfficientNetV2B0",  # resolved in keras.applications when built
        "efficientnet_v2_b0",
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
