"""Where the MLflow store is: the project's root, the tracking URI a run uses, SQLite files, models:/ URIs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from op_classifier.config import TrackingConfig

# The user's setting, read once: mlflow.set_tracking_uri() writes this variable too, and must not
# make one run's store the next run's in the same process.
_ENV_URI = os.environ.get("MLFLOW_TRACKING_URI")

SQLITE = "sqlite:///"


def project_root() -> Path:
    """The repository root: $DVC_ROOT under DVC (queued experiments run in a copy), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(cfg: TrackingConfig | None) -> str:
    """MLFLOW_TRACKING_URI, else the configured uri (none without a config), else MLflow's SQLite default at the root."""
    return _ENV_URI or (cfg.uri if cfg is not None else None) or default_store()


def default_store() -> str:
    """MLflow's own default, a SQLite file at the project root: sqlite:///<root>/mlflow.db."""
    return f"{SQLITE}{project_root() / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
    """The file of a sqlite:/// store URI, or None for any other store."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def missing_sqlite(uri: str) -> bool:
    """A SQLite store whose file does not exist yet (asking it anything would create it)."""
    path = sqlite_file(uri)
    return path is not None and not path.is_file()


@dataclass(frozen=True)
class Registered:
    """What a models:/ URI names: a registered model, by alias or by version (the text after its `/`)."""

    name: str
    alias: str | None = None
    version: str | None = None


def registered(model_uri: str) -> Registered | None:
    """The parts of models:/<name>@<alias> or models:/<name>/<version>; None for runs:/ URIs and paths."""
    scheme, _, rest = model_uri.partition(":/")
    if scheme != "models":
        return None
    name, _, alias = rest.strip("/").partition("@")
    if alias:
        return Registered(name, alias=alias)
    name, _, version = name.partition("/")
    return Registered(name, version=version)
