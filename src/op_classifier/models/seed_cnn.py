"""The original notebook's CNN: three conv blocks, one dense layer, one sigmoid output per class."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING

from op_classifier import schema
from op_classifier.models.registry import register
from op_classifier.schema import AT_LEAST_1, ModelBase, Rule

if TYPE_CHECKING:
    import keras


@dataclass
class SeedCnn(ModelBase):
    """conf/model/seed_cnn.yaml: the original's architecture, every size of it."""

    RULES: ClassVar[Dict[str, Rule]] = {
        "filters": Rule(list, AT_LEAST_1),
        "kernel_size": Rule(int, AT_LEAST_1),
        "units": Rule(int, AT_LEAST_1),
    }
    filters: List[int] = MISSING
    kernel_size: int = MISSING
    units: int = MISSING
    dropout: float = MISSING
    l2: float = MISSING
    resize: Optional[int] = MISSING

    def check(self, image_size: int, drawn: Mapping[str, list[Any]], where: Callable[..., str]) -> None:
        """Each conv block (valid convolution, 2x2 pooling) must leave a pixel, for every value drawn."""
        for filters, kernel_size, resize in itertools.product(drawn["filters"], drawn["kernel_size"], drawn["resize"]):
            side = left = resize or image_size
            for _ in filters:
                left = (left - kernel_size + 1) // 2
            schema.require(
                left >= 1,
                where("filters", "kernel_size", "resize"),
                f"{len(filters)} conv blocks of kernel_size {kernel_size} leave nothing of a "
                f"{side}-pixel input (use fewer filters, a smaller kernel_size or a larger model.resize)",
            )


@register("seed_cnn", SeedCnn)
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
    import keras
    from keras import layers

    from op_classifier.models.common.layers import augmentation, pixels, probabilities

    inputs, x = pixels(image_size, resize)
    x = augmentation(x, flip=flip, rotation=rotation, zoom=zoom, seed=seed)
    for i, width in enumerate(filters):
        x = layers.Conv2D(width, kernel_size, activation="relu")(x)
        if i == 0:  # the original normalised before and after its first pooling
            x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D()(x)
        x = layers.BatchNormalization()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(units, activation="relu", kernel_regularizer=keras.regularizers.L2(l2))(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    return keras.Model(inputs, probabilities(x, num_classes), name="seed_cnn")
