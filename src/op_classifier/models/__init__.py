"""The model registry: `model.name` picks an architecture module of this package.

An architecture is one module here registering its typed parameters and its builder with
`@register(<name>, ...)`, plus one `conf/model/<name>.yaml`; a keras.applications backbone is one line
of applications.py. Nothing else names it.

Architecture modules import Keras inside their builders, never at the top: every composition
(`op-classifier compose`, `dvc exp run -S`, each stage's start) imports the chosen module for its
schema, and Keras with TensorFlow would make that 6 s instead of 0.5 s (docs/decisions.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from op_classifier.errors import ConfigError

NOT_ARCHITECTURES = frozenset({"common", "pretrained"})  # shared pieces, not architectures


@dataclass(frozen=True)
class Architecture:
    """One registered architecture: its config schema and its builder."""

    name: str
    params: type  # a dataclass subclassing schema.ModelBase: the model section's schema
    build: Callable[..., Any]  # build(num_classes, image_size, seed, **args) -> keras.Model

    def args(self) -> tuple[str, ...]:
        """The builder's keyword arguments taken from config: the schema's keys, augment's flat."""
        return self.params.args()


_REGISTRY: dict[str, Architecture] = {}


def register(name: str, params: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `build` as architecture `name` with its schema `params`."""

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = Architecture(name, params, build)
        return build

    return decorate


def names() -> list[str]:
    """Every architecture this package registers (importing its modules: none imports Keras at the top)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in NOT_ARCHITECTURES:
            importlib.import_module(f"{__name__}.{module.name}")
    return sorted(_REGISTRY)


def get(name: str) -> Architecture:
    """The architecture registered as `name`; one line naming the key if unknown."""
    if name not in _REGISTRY:
        known = names()
        if name not in _REGISTRY:
            raise ConfigError(f"model.name: unknown architecture '{name}' (known: {', '.join(known)})")
    return _REGISTRY[name]
