"""A small residual net with global average pooling: a from-scratch recipe for small real image sets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING

from op_classifier import schema
from op_classifier.models.registry import register
from op_classifier.schema import AT_LEAST_1, ModelBase, Range, Rule

if TYPE_CHECKING:
    import keras


MIN_FIRST_WIDTH = 16  # filters of the first stage: fewer crash TensorFlow's oneDNN on a CPU


@dataclass
class ResNet(ModelBase):
    """conf/model/resnet.yaml: stage widths, blocks per stage, BatchNorm momentum, dropout."""

    RULES: ClassVar[Dict[str, Rule]] = {
        "widths": Rule(list, AT_LEAST_1),
        "blocks": Rule(int, AT_LEAST_1),
        "bn_momentum": Rule(float, Range(0, 1, high_open=True)),
        "stem_stride": Rule(int, Range(1, 2)),
    }
    widths: List[int] = MISSING
    blocks: int = MISSING
    stem_stride: int = MISSING
    bn_momentum: float = MISSING
    dropout: float = MISSING
    resize: Optional[int] = MISSING

    def check(self, image_size: int, drawn: Mapping[str, list[Any]], where: Callable[..., str]) -> None:
        """Every stage halves the side: the last one must still have a pixel. And a first stage of fewer
        than MIN_FIRST_WIDTH filters crashes TensorFlow's oneDNN kernels on a CPU (`free(): invalid size`,
        the process aborted; measured with 4, 8 and 12 filters, 16 and up train)."""
        for widths in drawn["widths"]:
            schema.require(
                widths[0] >= MIN_FIRST_WIDTH,
                where("widths"),
                f"the first stage needs at least {MIN_FIRST_WIDTH} filters, got {widths[0]} "
                "(fewer crash TensorFlow's oneDNN kernels on a CPU)",
            )
            for stride in drawn["stem_stride"]:
                for resize in drawn["resize"]:
                    side = resize or image_size
                    schema.require(
                        side // (stride * 2 ** len(widths)) >= 1,
                        where("widths", "stem_stride", "resize"),
                        f"{len(widths)} stages after a stride-{stride} stem leave nothing of a {side}-pixel input "
                        "(use fewer widths or a larger model.resize)",
                    )


def conv_bn(x: keras.KerasTensor, width: int, momentum: float, stride: int = 1, kernel: int = 3) -> keras.KerasTensor:
    """Convolution without bias, then BatchNorm (the residual add comes before the activation)."""
    from keras import layers

    x = layers.Conv2D(width, kernel, strides=stride, padding="same", use_bias=False)(x)
    return layers.BatchNormalization(momentum=momentum)(x)


def residual_block(x: keras.KerasTensor, width: int, stride: int, momentum: float) -> keras.KerasTensor:
    """Two 3x3 convolutions plus a shortcut (1x1 projection when the shape changes)."""
    from keras import layers

    shortcut = x
    y = layers.Activation("relu")(conv_bn(x, width, momentum, stride))
    y = conv_bn(y, width, momentum)
    if stride != 1 or x.shape[-1] != width:
        shortcut = conv_bn(x, width, momentum, stride, kernel=1)
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


@register("resnet", ResNet)
def build_model(
    num_classes: int,
    image_size: int,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks: int = 1,
    stem_stride: int = 1,
    bn_momentum: float = 0.9,
    dropout: float = 0.2,
    flip: bool = True,
    rotation: float = 0.1,
    zoom: float = 0.2,
    resize: int | None = 64,
    seed: int | None = None,
) -> keras.Model:
    """Stem, one stage per width (each halves the side), global average pooling, dropout, sigmoid head."""
    import keras
    from keras import layers

    from op_classifier.models.common.layers import augmentation, pixels, probabilities

    inputs, x = pixels(image_size, resize)
    x = augmentation(x, flip=flip, rotation=rotation, zoom=zoom, seed=seed)
    x = layers.Activation("relu")(conv_bn(x, widths[0], bn_momentum, stem_stride))
    for width in widths:
        for i in range(blocks):
            x = residual_block(x, width, 2 if i == 0 else 1, bn_momentum)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    return keras.Model(inputs, probabilities(x, num_classes), name="resnet")
