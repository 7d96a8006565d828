"""dvc.yaml's deps name every module a stage runs: changing one must re-run the stage (and nothing else)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = "op_classifier"
SOURCE = REPO / "src"
# Packages that import their modules by name at run time (the model registry loads models/<name>.py).
DISCOVERING = ("op_classifier.models",)


def _module_file(name: str) -> Path | None:
    path = SOURCE / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """The package's modules a file imports, at module level or inside functions (lazy imports run too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    for package in DISCOVERING:
        if _module_file(package) == path:
            found |= {f"{package}.{file.stem}" for file in path.parent.glob("*.py") if file.stem != "__init__"}
    return {name for name in found if name.split(".")[0] == PACKAGE and _module_file(name)}


def closure(module: str) -> set[Path]:
    """Every source file of the package that running `python -m <module>` can execute."""
    seen: set[str] = set()
    todo = [module, PACKAGE]  # the package's __init__ runs first
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(_imports(_module_file(name)))
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__ run too
    return {_module_file(name) for name in seen}


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(stage: str) -> None:
    spec = STAGES[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    needed = {path.relative_to(REPO).as_posix() for path in closure(module)}
    declared = {dep for dep in spec["deps"] if isinstance(dep, str) and dep.startswith("src/")}
    # A folder dep (the model registry's package) covers every file in it, and all of them must run.
    covered = {f for dep in declared if (REPO / dep).is_dir() for f in _files(REPO / dep)}
    files = (declared - {dep for dep in declared if (REPO / dep).is_dir()}) | covered
    assert needed - files == set(), f"dvc.yaml's {stage} stage misses these deps"
    assert files - needed == set(), f"dvc.yaml's {stage} stage declares code it never runs"


def _files(folder: Path) -> set[str]:
    return {path.relative_to(REPO).as_posix() for path in folder.rglob("*.py")}
