"""keras.applications' backbones under the shared head, one line each: adding one is adding its line.

ImageNet weights come through Keras's own download and cache (models/pretrained.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from op_classifier.models import pretrained
from op_classifier.models.registry import register

if TYPE_CHECKING:
    import keras

# registry name (conf/model/<name>.yaml) -> keras.applications' name, resolved when a model is built
APPLICATIONS = {
    "efficientnet_v2_b0": "EfficientNetV2B0",
    "mobilenet_v3_small": "MobileNetV3Small",
}


@dataclass
class Application(pretrained.Pretrained):
    """conf/model/<name>.yaml of a keras.applications backbone: weights, dropout before the head, input side."""


def _builder(name: str, application: str) -> Callable[..., keras.Model]:
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
        make = functools.partial(pretrained.application_backbone, application)
        return pretrained.assemble(
            make, name, num_classes, image_size, weights, dropout, flip, rotation, zoom, resize, seed
        )

    build_model.__doc__ = (
        f"{application} under global pooling, dropout and one sigmoid per class; raw 0..255 pixels in."
    )
    return build_model


for _name, _application in APPLICATIONS.items():
    register(_name, Application)(_builder(_name, _application))
