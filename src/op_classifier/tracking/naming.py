"""What a run is called and what describes it: its name, its params' dotted names, the commit, the files it keeps."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from op_classifier.tracking.uris import project_root

# In a stage's state folder (paths.tuning, paths.checkpoints): the tracker's run an interrupted stage continues.
RUN_ID_FILE = "mlflow_run_id"
PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"  # evaluate's kept predictions, in its run
RUN_NAME_MAX = 240  # MLflow stores run names up to 250 characters


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; lists are kept as their text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def run_name(stage: str, settings: Mapping[str, Any]) -> str:
    """A run's name in the runs table: the stage and its DVC experiment's name, else its main settings."""
    described = os.environ.get("DVC_EXP_NAME") or " ".join(f"{key}={value}" for key, value in settings.items())
    name = f"{stage} {described}"
    return name if len(name) <= RUN_NAME_MAX else name[: RUN_NAME_MAX - 1] + "…"


def git_commit() -> str | None:
    """The checked-out commit, or None outside git."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root())
    return done.stdout.strip() or None if done.returncode == 0 else None
