"""The model registry: `model.name` picks an architecture module of this package.

An architecture is one module here registering its typed parameters and its builder with
`@registry.register(<name>, ...)`, plus one `conf/model/<name>.yaml`; a keras.applications backbone is one line
of applications.py. Nothing else names it.

Architecture modules import Keras inside their builders, never at the top: every composition
(`op-classifier compose`, `dvc exp run -S`, each stage's start) imports the chosen module for its
schema, and Keras with TensorFlow would make that 6 s instead of 0.5 s (docs/decisions.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from op_classifier.errors import ConfigError
from op_classifier.models.registry import REGISTERED, Architecture

# Modules of this package that are not architectures: shared pieces and the registry itself.
NOT_ARCHITECTURES = frozenset({"common", "pretrained", "registry"})


def names() -> list[str]:
    """Every architecture this package registers (importing its modules: none imports Keras at the top)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in NOT_ARCHITECTURES:
            importlib.import_module(f"{__name__}.{module.name}")
    return sorted(REGISTERED)


def get(name: str) -> Architecture:
    """The architecture registered as `name`; one line naming the key if unknown."""
    if name not in REGISTERED:
        known = names()
        if name not in REGISTERED:
            raise ConfigError(f"model.name: unknown architecture '{name}' (known: {', '.join(known)})")
    return REGISTERED[name]


def check_choice(key: str, values: list[str], files: list[str]) -> None:
    """Each value an architecture or a conf/model file (`files`); one line naming the key if not."""
    known = names()
    for value in values:
        if value not in known and value not in files:
            also = f"; or a conf/model file: {', '.join(files)}" if files else ""
            raise ConfigError(f"{key}: unknown architecture '{value}' (an architecture: {', '.join(known)}{also})")
