"""The package's layout holds: MLflow stays inside tracking/, and tracking off loads neither MLflow nor Keras."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

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
