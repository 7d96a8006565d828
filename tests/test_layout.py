"""The package's layout holds: MLflow stays inside tracking/, and tracking off loads neither MLflow nor Keras."""

from __future__ import annotations

import ast
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

from op_classifier.training import sources
from tests.conftest import REPO

PACKAGE = REPO / "src" / "op_classifier"


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at module level or inside functions."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_tracking_package_imports_mlflow() -> None:
    importers = {
        path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if "mlflow" in _imported_roots(path)
    }
    assert importers, "the scan found no MLflow import at all: it is not looking at the package"
    assert {name for name in importers if not name.startswith("tracking/")} == set()


def test_outside_tracking_only_its_protocols_are_imported() -> None:
    # Serving, predict and the CLI reach MLflow through tracking.open_store (the ModelStore protocol) and
    # the stages through make_tracker (the Tracker): a second backend would touch tracking/ only. The team
    # server's process manager (tracking/server.py) imports no MLflow; the CLI starts and stops it.
    source = PACKAGE.parent
    reached = {
        (path.relative_to(PACKAGE).as_posix(), name)
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "tracking"
        for name in sources.imports(path, source)
        if name.startswith("op_classifier.tracking")
    }
    assert ("stages/train.py", "op_classifier.tracking") in reached  # the scan sees the stages' imports
    assert {(path, name) for path, name in reached if name != "op_classifier.tracking"} == {
        ("cli/tracking_server.py", "op_classifier.tracking.server")
    }


def test_tracking_off_loads_neither_mlflow_nor_keras() -> None:
    probe = (
        "import sys\n"
        "from op_classifier.tracking import make_tracker\n"
        "from tests.conftest import compose\n"
        "tracker = make_tracker(compose('tracking=none').tracking)\n"
        "with tracker.run('probe', params={'a': 1}):\n"
        "    tracker.log_metrics({'val_accuracy': 0.5})\n"
        "print(sorted(name for name in ('mlflow', 'keras', 'tensorflow') if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_models_logged_before_the_split_still_find_their_wrapper() -> None:
    # A pyfunc logged by an earlier version pickled its wrapper as op_classifier.tracking.PixelClassifier.
    from op_classifier.tracking.served import PixelClassifier

    assert pickle.loads(b"cop_classifier.tracking\nPixelClassifier\n.") is PixelClassifier


# Which parts of the package each part may import (a part: a subpackage or a top-level module). Read
# top to bottom: entry points, then stages and serving, then the machinery, then the vocabulary.
# `config -> models` is the one arrow upward: config looks up model.name's schema in the registry.
ALLOWED = {
    "cli": {
        "audit",
        "compare",
        "config",
        "data",
        "defaults",
        "errors",
        "models",
        "quiet",
        "runner",
        "serving",
        "stages",
        "tracking",
        "training",
        "weights",
    },
    "audit": {"config", "data", "errors", "reports"},
    "compare": {"config", "data", "errors", "metric_names", "reports", "tracking"},
    "stages": {
        "audit",
        "compare",
        "config",
        "data",
        "errors",
        "files",
        "metric_names",
        "models",
        "progress",
        "reports",
        "runner",
        "schema",
        "tracking",
        "training",
    },
    "serving": {"config", "data", "defaults", "errors", "files", "models", "progress", "quiet", "reports", "tracking"},
    "tracking": {"config", "data", "defaults", "errors", "metric_names", "models", "net"},
    "training": {
        "compare",
        "config",
        "data",
        "errors",
        "metric_names",
        "models",
        "net",
        "progress",
        "schema",
        "weights",
    },
    "reports": {"data", "errors"},
    "runner": {"config", "errors"},
    "data": {"config", "errors", "files"},
    "config": {"errors", "metric_names", "models", "schema"},
    "models": {"errors", "metric_names", "schema", "weights"},
    "weights": {"errors"},
    "schema": {"errors"},
    "__init__": {"quiet"},
}
STRING_MODULE = re.compile(r"op_classifier(\.\w+)+")


def _part(path: Path, package: Path) -> str:
    return path.relative_to(package).parts[0].removesuffix(".py")


def _edges(package: Path = PACKAGE) -> dict[str, set[str]]:
    """part -> parts it imports: at module level, inside functions, and by name through importlib."""
    source = package.parent
    edges: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names = set(sources.imports(path, source))
        text = path.read_text(encoding="utf-8")
        if "import_module" in text:  # a module loaded by its name: every module name the file spells
            names |= {m.group(0) for m in STRING_MODULE.finditer(text) if sources.module_file(m.group(0), source)}
        for name in names - {"op_classifier"}:  # the package's own __init__ runs before anything
            target = name.split(".")[1]
            if target != _part(path, package):
                edges.setdefault(_part(path, package), set()).add(target)
    return edges


def _loops(edges: dict[str, set[str]]) -> list[str]:
    """The parts from which the imports lead back to themselves."""

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, set()) - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    return sorted(part for part in edges if reaches(part, part, set()))


def test_parts_import_only_what_the_layout_allows() -> None:
    edges = _edges()
    assert "stages" in edges.get("cli", set()), "importlib's stage loading is not seen: the scan is blind"
    extra = {part: sorted(targets - ALLOWED.get(part, set())) for part, targets in edges.items()}
    assert {part: found for part, found in extra.items() if found} == {}


def test_no_import_loop_between_parts() -> None:
    assert _loops(_edges()) == []


def test_the_loop_check_sees_a_loop_through_a_function_level_import(tmp_path: Path) -> None:
    copy = tmp_path / "src" / "op_classifier"
    shutil.copytree(PACKAGE, copy)
    with (copy / "weights/pytorch.py").open("a") as handle:
        handle.write("\n\ndef _late() -> None:\n    from op_classifier.models import names  # noqa: F401\n")
    assert {"models", "weights"} <= set(_loops(_edges(copy)))


def _module(path: Path, source: Path) -> str:
    parts = path.relative_to(source).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_loops(package: Path = PACKAGE) -> list[list[str]]:
    """Groups of modules whose imports (module level or inside functions) lead back to themselves.

    A module's parent packages run before it but are not its imports: `from a.b import c` of the
    module a.b.c is an edge to a.b.c alone (sources.imports).
    """
    source = package.parent
    edges = {_module(path, source): sources.imports(path, source) for path in package.rglob("*.py")}
    reach = {name: _reach(edges, name) for name in edges}
    groups = {frozenset({m, *(n for n in reach[m] if m in reach[n])}) for m in edges if m in reach[m]}
    return sorted(sorted(group) for group in groups)


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_loop_between_modules() -> None:
    assert _module_loops() == []


def test_the_module_loop_check_sees_a_lazy_loop(tmp_path: Path) -> None:
    copy = tmp_path / "src" / "op_classifier"
    shutil.copytree(PACKAGE, copy)
    with (copy / "tracking/uris.py").open("a") as handle:
        handle.write("\n\ndef _late() -> None:\n    from op_classifier.tracking import make_tracker  # noqa: F401\n")
    loops = _module_loops(copy)
    assert any({"op_classifier.tracking", "op_classifier.tracking.uris"} <= set(loop) for loop in loops), loops


STAGE_MAX_LINES = 150  # a stage reads top to bottom at once: load, build, fit, record; its machinery lives elsewhere


def test_every_stage_reads_as_one_story() -> None:
    lengths = {
        path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in (PACKAGE / "stages").glob("*.py")
    }
    assert {"prepare.py", "tune.py", "train.py", "evaluate.py"} <= set(lengths)
    assert {name: n for name, n in lengths.items() if n > STAGE_MAX_LINES} == {}


LOOSE_MAX = 10  # modules at the package's top, beside its subpackages


def test_few_modules_loose_at_the_top() -> None:
    loose = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(loose) <= LOOSE_MAX, loose


MODULE_MAX_LINES = 450  # a module longer than this does more than one job: split it by job


def test_every_module_reads_at_once() -> None:
    lengths = {
        path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in (REPO / "src").rglob("*.py")
    }
    assert len(lengths) > 40, "the scan found too few modules: it is not looking at src/"
    assert {name: n for name, n in lengths.items() if n >= MODULE_MAX_LINES} == {}
