"""EfficientNet-Lite (the mobile EfficientNet: ReLU6, no squeeze-excite, fixed stem and head) as a backbone.

One builder for lite0, lite1 and lite2: `width` and `depth` scale the blocks as the reference does.
ImageNet weights come from the installed weight packages, read without torch (op_classifier.weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Dict, Optional

from omegaconf import MISSING

from op_classifier.models import pretrained
from op_classifier.models.registry import register
from op_classifier.schema import Range, Rule

if TYPE_CHECKING:
    import keras

STEM, HEAD = 32, 1280  # Lite keeps both fixed at every width
# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, filters out)
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
BN_EPSILON = 1e-3  # TensorFlow's, which the checkpoints were trained with


@dataclass
class EfficientNetLite(pretrained.Pretrained):
    """conf/model/efficientnet_lite{0,1,2}.yaml: width and depth multipliers, weights, dropout, input side."""

    RULES: ClassVar[Dict[str, Rule]] = {
        **pretrained.Pretrained.RULES,
        "width": Rule(float, Range(0, 4, low_open=True)),
        "depth": Rule(float, Range(0, 4, low_open=True)),
    }
    width: float = MISSING
    depth: float = MISSING

    def weights_file(self) -> Optional[Path]:
        """A given file, or the installed ImageNet checkpoint for `imagenet`."""
        if self.weights == "imagenet":
            from op_classifier.weights.imagenet import checkpoint

            return checkpoint(self.width, self.depth)
        return super().weights_file()


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The reference's channel rounding: scale, then to a multiple of 8, never 10% below the scaled value."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def blocks(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """Every block as (kernel, stride, expansion, filters in, filters out); the first and last stage keep one block."""
    out, filters_in = [], STEM
    for i, (repeats, kernel, stride, expand, filters) in enumerate(STAGES):
        count = repeats if i in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))
        filters_out = round_filters(filters, width)
        for j in range(count):
            out.append((kernel, stride if j == 0 else 1, expand, filters_in, filters_out))
            filters_in = filters_out
    return out


def _conv_bn(
    x: keras.KerasTensor, name: str, filters: int, kernel: int, stride: int = 1, relu: bool = True
) -> keras.KerasTensor:
    from keras import layers

    from op_classifier.models.common.convolutions import Conv2D

    x = Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _block(
    x: keras.KerasTensor, i: int, kernel: int, stride: int, expand: int, filters_in: int, filters_out: int
) -> keras.KerasTensor:
    from keras import layers

    from op_classifier.models.common.convolutions import DepthwiseConv2D

    name = f"block{i}"
    y = _conv_bn(x, f"{name}_expand", filters_in * expand, 1) if expand != 1 else x
    y = DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv")(y)
    y = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = _conv_bn(y, f"{name}_project", filters_out, 1, relu=False)
    if stride == 1 and filters_in == filters_out:
        y = layers.Add(name=f"{name}_add")([y, x])
    return y


def backbone(side: int, width: float = 1.0, depth: float = 1.0) -> keras.Model:
    """EfficientNet-Lite without its classifier: raw 0..255 pixels in, (side/32)^2 x 1280 features out."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(side, side, 3), name="pixels")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="scale")(inputs)  # the checkpoints' (x - 127) / 128
    x = _conv_bn(x, "stem", STEM, 3, stride=2)
    for i, spec in enumerate(blocks(width, depth)):
        x = _block(x, i, *spec)
    x = _conv_bn(x, "top", HEAD, 1)
    return keras.Model(inputs, x, name=pretrained.BACKBONE)


@register("efficientnet_lite", EfficientNetLite)
def build_model(
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    depth: float = 1.0,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
    flip: bool = True,
    rotation: float = 0.1,
    zoom: float = 0.2,
    resize: int | None = 224,
    seed: int | None = None,
) -> keras.Model:
    """EfficientNet-Lite under global pooling, dropout and one sigmoid per class; raw 0..255 pixels in."""
    from op_classifier.weights.imagenet import load_imagenet

    def make(side: int, weights: str | None) -> keras.Model:
        net = backbone(side, width, depth)
        if weights == "imagenet":
            load_imagenet(net, width, depth)
        elif weights:
            try:
                net.load_weights(weights)
            except Exception as error:  # h5py's OSError for a file that is not HDF5, Keras's ValueError for others
                raise pretrained.unloadable(weights, error) from None
        return net

    return pretrained.assemble(
        make, "efficientnet_lite", num_classes, image_size, weights, dropout, flip, rotation, zoom, resize, seed
    )
