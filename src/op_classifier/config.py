"""The one typed schema of the composed config, and the ways to get a validated instance of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from op_classifier.errors import ConfigError

CONF_DIR = "conf"
PARAMS_FILE = "params.yaml"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class PathsConfig:
    """Every file location, relative to the project root."""

    raw: str = MISSING
    prepared: str = MISSING
    tuning: str = MISSING
    best_hparams: str = MISSING
    leaderboard: str = MISSING
    checkpoints: str = MISSING
    model: str = MISSING
    history: str = MISSING
    metrics: str = MISSING
    confusion: str = MISSING


@dataclass
class DataConfig:
    """What the prepare stage reads and how it splits."""

    classes: Optional[List[str]] = MISSING
    labels_file: Optional[str] = MISSING
    image_size: int = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    max_image_pixels: int = MISSING

    def __post_init__(self) -> None:
        _check(8 <= self.image_size <= 4096, "data.image_size", "must be between 8 and 4096")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _check(0.0 < value < 1.0, f"data.{name}", f"must be between 0 and 1, got {value}")
        _check(
            self.val_fraction + self.test_fraction < 1.0,
            "data.val_fraction",
            "val_fraction + test_fraction must leave images to train on",
        )
        _check(self.max_image_pixels > 0, "data.max_image_pixels", "must be positive")
        if self.classes is not None:
            _check(len(self.classes) >= 2, "data.classes", "needs at least two classes")
            _check(len(set(self.classes)) == len(self.classes), "data.classes", "has duplicates")


@dataclass
class AugmentConfig:
    """Random augmentation applied inside the model while training."""

    flip: bool = MISSING
    rotation: float = MISSING
    zoom: float = MISSING


@dataclass
class ModelConfig:
    """The architecture; every size and rate of it."""

    name: str = MISSING
    filters: List[int] = MISSING
    kernel_size: int = MISSING
    units: int = MISSING
    dropout: float = MISSING
    l2: float = MISSING
    resize: Optional[int] = MISSING
    augment: AugmentConfig = MISSING


SEARCH_TYPES = ("int", "float", "choice", "bool")
TUNER_KINDS = ("hyperband", "random", "bayesian", "none")


@dataclass
class SearchParam:
    """One hyperparameter of the search space."""

    type: str = MISSING
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    sampling: Optional[str] = None
    values: Optional[List[Any]] = None


@dataclass
class TunerConfig:
    """Which Keras Tuner search runs, on what, for how long."""

    kind: str = MISSING
    objective: str = MISSING
    direction: str = MISSING
    max_epochs: int = MISSING
    factor: int = MISSING
    max_trials: int = MISSING
    epochs: int = MISSING
    patience: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING
    search_space: Dict[str, SearchParam] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.kind in TUNER_KINDS, "tuner.kind", f"'{self.kind}' is not one of {', '.join(TUNER_KINDS)}")
        _check(self.direction in ("max", "min"), "tuner.direction", "must be max or min")
        for name in ("max_epochs", "max_trials", "epochs"):
            _check(getattr(self, name) >= 1, f"tuner.{name}", "must be at least 1")
        _check(self.factor >= 2, "tuner.factor", "must be at least 2")
        for name, spec in self.search_space.items():
            _check_search_param(f"tuner.search_space.{name}", spec)


def _check_search_param(key: str, spec: SearchParam) -> None:
    _check(spec.type in SEARCH_TYPES, f"{key}.type", f"'{spec.type}' is not one of {', '.join(SEARCH_TYPES)}")
    if spec.type in ("int", "float"):
        _check(spec.min is not None and spec.max is not None, key, f"type {spec.type} needs min and max")
        _check(spec.min <= spec.max, key, "min is above max")
    if spec.type == "choice":
        _check(bool(spec.values), key, "type choice needs a non-empty values list")


@dataclass
class TrainConfig:
    """The final training run."""

    learning_rate: float = MISSING
    batch_size: int = MISSING
    epochs: int = MISSING
    patience: int = MISSING
    monitor: str = MISSING
    lr_factor: float = MISSING
    lr_patience: int = MISSING
    device: str = MISSING
    mixed_precision: str = MISSING

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, "train.learning_rate", "must be positive")
        _check(self.batch_size >= 1, "train.batch_size", "must be at least 1")
        _check(self.epochs >= 1, "train.epochs", "must be at least 1")
        _check(0.0 < self.lr_factor <= 1.0, "train.lr_factor", "must be in (0, 1]")
        _check(self.device in ("auto", "cpu", "gpu"), "train.device", "must be auto, cpu or gpu")
        _check(self.mixed_precision in ("auto", "on", "off"), "train.mixed_precision", "must be auto, on or off")


@dataclass
class TrackingConfig:
    """Where MLflow records runs, and when a model becomes the champion."""

    enabled: bool = MISSING
    uri: Optional[str] = MISSING
    experiment: str = MISSING
    model_name: str = MISSING
    champion_metric: str = MISSING
    champion_target: float = MISSING


@dataclass
class Config:
    """The whole composed config, as params.yaml holds it."""

    seed: int = MISSING
    paths: PathsConfig = MISSING
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    tuner: TunerConfig = MISSING
    train: TrainConfig = MISSING
    tracking: TrackingConfig = MISSING


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _hydra_message(text: str) -> str:
    """Hydra's first line, plus the available options when it lists them."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        options = [line for line in lines[2:] if not line.startswith(("Config search path", "provider="))]
        return f"{lines[0]} (available: {', '.join(options)})"
    return lines[0] if lines else "invalid override"


def _describe(error: OmegaConfBaseException) -> str:
    """`<full.key>: <what is wrong>` for an OmegaConf error."""
    key = getattr(error, "full_key", None) or "config"
    unknown = isinstance(error, (ConfigKeyError, ConfigAttributeError)) and "MISSING" not in str(error)
    return f"{key}: {'unknown key' if unknown else _first_line(error)}"


def validate(raw: Any) -> Config:
    """Check a plain or OmegaConf mapping against the schema and return the typed config."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{missing[0]}: missing value")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(_first_line(error)) from None


def compose(overrides: tuple[str, ...] = (), conf_dir: Path | None = None) -> DictConfig:
    """Compose conf/ with Hydra overrides, exactly as DVC's Hydra composition does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    conf_dir = (conf_dir or Path.cwd() / CONF_DIR).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(f"no {CONF_DIR}/config.yaml in {conf_dir.parent}: run from the project root")
    try:
        with initialize_config_dir(str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        cause = error.__cause__
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            raise ConfigError(_describe(cause)) from None
        raise ConfigError(_hydra_message(str(error))) from None
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """Serialise a composed config the way DVC writes params.yaml."""
    return OmegaConf.to_yaml(cfg)


def load_params(path: Path = Path(PARAMS_FILE)) -> Config:
    """Read and validate params.yaml (what `dvc repro` runs the stages with)."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `op-classifier compose` in the project root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({_first_line(error)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate(raw)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested plain dicts (for logging and hashing)."""
    return dataclasses.asdict(cfg)
