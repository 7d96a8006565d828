"""Every tracking implementation matches its protocol: the methods it names, with the same parameters."""

from __future__ import annotations

import inspect
from typing import Protocol

import pytest

from op_classifier.tracking import ModelStore, NullTracker, Served, Tracker
from op_classifier.tracking.model_store import MlflowModelStore
from op_classifier.tracking.runs import MlflowTracker
from op_classifier.tracking.served import ServedModel


def _methods(cls: type) -> dict[str, inspect.Signature]:
    """The public methods a class defines (its own or inherited from ours), by name."""
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def _parameters(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    """Each parameter's name, kind and default: what a caller relies on (annotations are strings here)."""
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize(
    ("protocol", "implementation"),
    [(Tracker, MlflowTracker), (Tracker, NullTracker), (ModelStore, MlflowModelStore), (Served, ServedModel)],
    ids=lambda cls: cls.__name__,
)
def test_the_implementation_matches_its_protocol(protocol: type[Protocol], implementation: type) -> None:
    wanted, given = _methods(protocol), _methods(implementation)
    assert wanted, f"{protocol.__name__} declares no method: the scan is blind"
    assert sorted(set(wanted) - set(given)) == []
    assert {name: _parameters(given[name]) for name in wanted} == {
        name: _parameters(signature) for name, signature in wanted.items()
    }


def test_a_differing_signature_is_seen() -> None:
    class Drifted(NullTracker):
        def register(self, model_uri: str, score: float) -> dict:  # type: ignore[override]
            return {}

    assert _parameters(_methods(Drifted)["register"]) != _parameters(_methods(Tracker)["register"])
