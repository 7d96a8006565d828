"""The architectures registered so far: each architecture module registers its schema and builder here.

Architecture modules import this module, never the package: the package's `names()` and `get()` import
them (discovery), so an import back would be a loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """One registered architecture: its config schema and its builder."""

    name: str
    params: type  # a dataclass subclassing schema.ModelBase: the model section's schema
    build: Callable[..., Any]  # build(num_classes, image_size, seed, **args) -> keras.Model

    def args(self) -> tuple[str, ...]:
        """The builder's keyword arguments taken from config: the schema's keys, augment's flat."""
        return self.params.args()


REGISTERED: dict[str, Architecture] = {}


def register(name: str, params: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `build` as architecture `name` with its schema `params`."""

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        REGISTERED[name] = Architecture(name, params, build)
        return build

    return decorate
