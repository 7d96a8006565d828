"""EfficientNet-Lite's PyTorch state dict (EfficientNet-PyTorch's names) into the Keras backbone.

Every tensor is consumed and every layer filled, or one line names the first thing that does not fit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from op_classifier.weights.pytorch import CheckpointError

if TYPE_CHECKING:
    import keras

CLASSIFIER = ("_fc.weight", "_fc.bias")  # ImageNet's 1000-class head: a backbone leaves it out
IGNORED = "num_batches_tracked"  # PyTorch's BatchNorm step counter: no Keras weight holds it
_FIXED = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}
_IN_BLOCK = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dw_conv": "_depthwise_conv", "dw_bn": "_bn1"}
_IN_BLOCK |= {"project_conv": "_project_conv", "project_bn": "_bn2"}


def torch_prefix(layer: str) -> str | None:
    """The state dict's prefix for a Keras layer of models.efficientnet_lite.backbone (None: no weights)."""
    if layer in _FIXED:
        return _FIXED[layer]
    match = re.fullmatch(r"block(\d+)_(\w+)", layer)
    if match and match.group(2) in _IN_BLOCK:
        return f"_blocks.{match.group(1)}.{_IN_BLOCK[match.group(2)]}"
    return None


def _layer_arrays(kind: str, prefix: str, state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(tensor name, array in Keras's layout) for each of the layer's weights, in Keras's order."""
    if kind == "BatchNormalization":
        return [
            (f"{prefix}.{key}", state.get(f"{prefix}.{key}"))
            for key in ("weight", "bias", "running_mean", "running_var")
        ]
    name = f"{prefix}.weight"
    tensor = state.get(name)
    if tensor is None:
        return [(name, None)]
    # PyTorch: (out, in, kh, kw), depthwise (channels, 1, kh, kw); Keras: (kh, kw, in, out), depthwise (kh, kw, channels, 1)
    order = (2, 3, 0, 1) if kind == "DepthwiseConv2D" else (2, 3, 1, 0)
    return [(name, tensor.transpose(order) if tensor.ndim == 4 else tensor)]


def load_into(backbone: keras.Model, state: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """Set every weight of `backbone` from `state`; the ImageNet classifier's tensors are returned, not loaded.

    `what` names the checkpoint and architecture in the one-line errors.
    """
    used: set[str] = set()
    for layer in backbone.layers:
        if not layer.weights:
            continue
        prefix = torch_prefix(layer.name)
        if prefix is None:
            raise CheckpointError(f"{what}: no checkpoint tensor maps to layer {layer.name}")
        arrays = _layer_arrays(type(layer).__name__, prefix, state)
        for (name, array), variable in zip(arrays, layer.weights):
            if array is None:
                raise CheckpointError(
                    f"{what}: the checkpoint has no {name} (for layer {layer.name}): wrong architecture?"
                )
            if tuple(array.shape) != tuple(variable.shape):
                raise CheckpointError(
                    f"{what}: {name} is {tuple(state[name].shape)} ({tuple(array.shape)} in Keras's layout), "
                    f"layer {layer.name} needs {tuple(variable.shape)}: wrong architecture or width?"
                )
        layer.set_weights([array for _, array in arrays])
        used.update(name for name, _ in arrays)
    left = [name for name in state if name not in used and not name.endswith(IGNORED) and name not in CLASSIFIER]
    if left:
        raise CheckpointError(
            f"{what}: {len(left)} checkpoint tensors fit no layer, first {left[0]}: wrong architecture or depth?"
        )
    return {name: state[name] for name in CLASSIFIER if name in state}
