"""Which of the package's source files a module can run: its import closure, read from the code.

dvc.yaml's deps (tests/test_dvc_deps.py) and the fingerprint of a stage's resumable state
(training/state.py) both come from it, so a stage's state and its DVC deps change with the same files.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "op_classifier"
SOURCE = Path(__file__).resolve().parents[2]  # src/
# Packages that import their modules by name at run time (the model registry loads every models/*.py).
DISCOVERING = (f"{PACKAGE}.models",)


def module_file(name: str, source: Path = SOURCE) -> Path | None:
    """The file of a dotted module name under `source`, or None when it is not the package's."""
    path = source / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path, source: Path = SOURCE) -> set[str]:
    """The package's modules a file imports, at module level or inside functions (lazy imports run too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c`: the module a.b.c when c is one (a.b's __init__ runs as its parent), else a.b.
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {name for name in submodules if module_file(name, source)}
            if any(not module_file(name, source) for name in submodules):
                found.add(node.module)
    for package in DISCOVERING:
        if module_file(package, source) == path:
            found |= {f"{package}.{file.stem}" for file in path.parent.glob("*.py") if file.stem != "__init__"}
    return {name for name in found if name.split(".")[0] == PACKAGE and module_file(name, source)}


def closure(module: str, source: Path = SOURCE) -> set[Path]:
    """Every source file of the package that running `python -m <module>` can execute."""
    seen: set[str] = set()
    todo = [module, PACKAGE]  # the package's __init__ runs first
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(imports(module_file(name, source), source))
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__ run too
    return {module_file(name, source) for name in seen}
