"""What the keras.applications backbones share: their schema, weights loading and the model around them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional

from omegaconf import MISSING

from op_classifier import schema
from op_classifier.errors import ConfigError, first_line
from op_classifier.schema import ModelBase, Rule

if TYPE_CHECKING:
    import keras

BACKBONE = "backbone"  # the layer name train's fine-tuning phase looks for
POOLED = "pooled"  # the backbone's globally pooled features: what a frozen backbone's head trains on
MIN_SIDE = 32  # the smallest input keras.applications' backbones accept


@dataclass
class Pretrained(ModelBase):
    """A keras.applications backbone (ImageNet weights, none, or a local file) under a new head."""

    RULES: ClassVar[Dict[str, Rule]] = {"weights": Rule(str, nullable=True)}
    weights: Optional[str] = MISSING  # imagenet | null (random init) | path to the backbone's .weights.h5
    dropout: float = MISSING
    resize: Optional[int] = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights not in (None, "imagenet"):
            schema.require(
                self.weights.endswith(".weights.h5"),
                "model.weights",
                f"{self.weights} is not a Keras weights file (imagenet, null, or a path to the backbone's .weights.h5)",
            )
            schema.require(Path(self.weights).is_file(), "model.weights", f"no file {self.weights}")

    def weights_file(self) -> Optional[Path]:
        """A given weights file; None for none, and for `imagenet` through Keras's own download."""
        return Path(self.weights) if self.weights not in (None, "imagenet") else None

    def check(self, image_size: int, drawn: Mapping[str, list[Any]], where: Callable[..., str]) -> None:
        """The backbone needs at least MIN_SIDE pixels a side."""
        for resize in drawn["resize"]:
            side = resize or image_size
            schema.require(
                side >= MIN_SIDE,
                where("resize") if resize else "data.image_size",
                f"{self.name} takes images of at least {MIN_SIDE} pixels a side, got {side}",
            )


def assemble(
    make: Callable[[int, str | None], keras.Model],
    name: str,
    num_classes: int,
    image_size: int,
    weights: str | None,
    dropout: float,
    flip: bool,
    rotation: float,
    zoom: float,
    resize: int | None,
    seed: int | None,
) -> keras.Model:
    """Raw pixels -> augmentation -> backbone (its own preprocessing) -> global pooling -> sigmoid head.

    `make(side, weights)` builds the backbone. With weights, the backbone starts frozen and runs in
    inference mode (its BatchNorm statistics are ImageNet's, kept even when train.fine_tune_epochs
    unfreezes its top layers); without, it trains from scratch like any other layer.
    """
    import keras
    from keras import layers

    from op_classifier.models.common.layers import augmentation, pixels

    inputs, x = pixels(image_size, resize, rescale=False)
    x = augmentation(x, flip=flip, rotation=rotation, zoom=zoom, seed=seed)
    backbone = make(resize or image_size, weights)
    backbone.name = BACKBONE
    if weights:
        backbone.trainable = False
        x = backbone(x, training=False)
    else:
        x = backbone(x)
    x = layers.GlobalAveragePooling2D(name=POOLED)(x)
    return keras.Model(inputs, top(x, num_classes, dropout, seed), name=name)


def top(x: keras.KerasTensor, num_classes: int, dropout: float, seed: int | None) -> keras.KerasTensor:
    """What follows the pooled features: dropout, then one sigmoid per class."""
    from keras import layers

    from op_classifier.models.common.layers import probabilities

    return probabilities(layers.Dropout(dropout, seed=seed)(x), num_classes)


def application_backbone(application: str, side: int, weights: str | None) -> keras.Model:
    """keras.applications' backbone of that name (no top, its preprocessing inside) for `assemble`."""
    import keras

    try:
        with warnings.catch_warnings():
            # keras.applications warns for every side but 224 that ImageNet weights are 224's: the
            # backbone is convolutional and global-pooled, so they apply at any side (as fine-tuning does).
            warnings.filterwarnings("ignore", message=".*input_shape. is undefined or non-square", category=UserWarning)
            return getattr(keras.applications, application)(
                input_shape=(side, side, 3), include_top=False, weights=weights, include_preprocessing=True
            )
    except Exception as error:  # keras.applications raises a bare Exception when the download fails
        if weights == "imagenet" and "URL fetch failure" in str(error):
            raise ConfigError(
                "model.weights=imagenet: the ImageNet weights cannot be downloaded (offline?); "
                "use model.weights=null or a local .weights.h5 file"
            ) from None
        if weights not in (None, "imagenet"):
            raise unloadable(weights, error) from None
        raise


def unloadable(weights: str, error: Exception) -> ConfigError:
    """One line for a weights file the backbone cannot take: not HDF5, truncated, another architecture's."""
    return ConfigError(f"model.weights={weights}: not this backbone's weights ({first_line(error)})")
