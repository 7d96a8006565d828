"""The one typed schema of the composed config, and the ways to get a validated instance of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from op_classifier import metric_names, models
from op_classifier.errors import ConfigError, first_line
from op_classifier.schema import (
    AT_LEAST_0,
    AT_LEAST_1,
    FRACTION,
    IMAGE_SIDE,
    POSITIVE,
    SEED,
    TRAIN_SEARCH_RULES,
    UNIT,
    ModelBase,
    Range,
    SearchParam,
    check_finite,
    check_range,
    check_search_param,
    check_train_search_param,
    composition_error,
    describe,
    drawable,
    require,
)

CONF_DIR = "conf"
PARAMS_FILE = "params.yaml"


def _check_metric(key: str, name: str, classes: Optional[List[str]]) -> None:
    require(
        metric_names.is_reported(name, classes),
        key,
        f"the model does not report '{name}' (it reports {metric_names.describe(classes)})",
    )


@dataclass
class PathsConfig:
    """Every file location, relative to the project root."""

    raw: str = MISSING
    prepared: str = MISSING
    tuning: str = MISSING
    best_hparams: str = MISSING
    leaderboard: str = MISSING
    importance: str = MISSING
    search_plots: str = MISSING
    checkpoints: str = MISSING
    weights: str = MISSING
    model: str = MISSING
    history: str = MISSING
    metrics: str = MISSING
    confusion: str = MISSING
    predictions: str = MISSING
    gallery: str = MISSING
    audit_issues: str = MISSING
    audit_summary: str = MISSING
    audit_gallery: str = MISSING
    export: str = MISSING
    repeats: str = MISSING


@dataclass
class DataConfig:
    """What the prepare stage reads and how it splits."""

    classes: Optional[List[str]] = MISSING
    labels_file: Optional[str] = MISSING
    exclude_file: Optional[str] = MISSING  # images left out, with why (`path,reason`), in paths.raw
    image_size: int = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    max_image_pixels: int = MISSING
    max_file_mb: int = MISSING
    near_duplicates: Optional[int] = MISSING  # bits of the perceptual hash; 0 or null: no grouping

    def __post_init__(self) -> None:
        check_range("data.image_size", self.image_size, IMAGE_SIDE)
        for name in ("val_fraction", "test_fraction"):
            check_range(f"data.{name}", getattr(self, name), FRACTION)
        require(
            self.val_fraction + self.test_fraction < 1.0,
            "data.val_fraction",
            "val_fraction + test_fraction must leave images to train on",
        )
        check_range("data.max_image_pixels", self.max_image_pixels, AT_LEAST_1)
        check_range("data.max_file_mb", self.max_file_mb, AT_LEAST_1)
        if self.near_duplicates is not None:
            # At most the hash's length: data/near_duplicates.py's HASH_BITS.
            check_range("data.near_duplicates", self.near_duplicates, Range(0, 256))
        if self.classes is not None:
            require(len(self.classes) >= 2, "data.classes", "needs at least two classes")
            require(len(set(self.classes)) == len(self.classes), "data.classes", "has duplicates")


TUNER_KINDS = ("hyperband", "random", "bayesian", "none")


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
        require(self.kind in TUNER_KINDS, "tuner.kind", f"'{self.kind}' is not one of {', '.join(TUNER_KINDS)}")
        require(self.direction in ("max", "min"), "tuner.direction", "must be max or min")
        for name in ("max_epochs", "max_trials", "epochs", "batch_size"):
            check_range(f"tuner.{name}", getattr(self, name), AT_LEAST_1)
        check_range("tuner.factor", self.factor, Range(2))
        check_range("tuner.patience", self.patience, AT_LEAST_0)
        check_range("tuner.learning_rate", self.learning_rate, POSITIVE)


# The search-space entry that picks model.name: each architecture it names brings its own section and
# search-space entries (its conf/model file's; model.name's from this config), active when it is drawn.
ARCHITECTURE = "name"


def _check_architecture_choice(spec: SearchParam) -> None:
    """tuner.search_space.name: a choice of architectures and conf/model files (lite2: efficientnet_lite's)."""
    key = f"tuner.search_space.{ARCHITECTURE}"
    require(spec.type == "choice", f"{key}.type", f"the architecture is a choice, not {spec.type}")
    require(bool(spec.values), key, "type choice needs a non-empty values list")
    files = sorted(path.stem for path in (Path.cwd() / CONF_DIR / "model").glob("*.yaml"))
    models.check_choice(f"{key}.values", spec.values, files)


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
    optimizer: str = MISSING
    weight_decay: float = MISSING
    schedule: str = MISSING
    warmup_epochs: int = MISSING
    label_smoothing: float = MISSING
    fine_tune_epochs: int = MISSING
    fine_tune_layers: int = MISSING
    fine_tune_lr_factor: float = MISSING
    head_on_features: bool = MISSING

    def __post_init__(self) -> None:
        check_range("train.learning_rate", self.learning_rate, POSITIVE)
        require(self.optimizer in ("adam", "adamw"), "train.optimizer", "must be adam or adamw")
        require(self.schedule in ("plateau", "cosine"), "train.schedule", "must be plateau or cosine")
        check_range("train.weight_decay", self.weight_decay, AT_LEAST_0)
        check_range("train.warmup_epochs", self.warmup_epochs, AT_LEAST_0)
        require(
            self.schedule != "cosine" or self.warmup_epochs < self.epochs,
            "train.warmup_epochs",
            f"must be below train.epochs ({self.epochs}) for the cosine schedule, got {self.warmup_epochs}"
            " (train.warmup_epochs=0: no warm-up)",
        )
        check_range("train.label_smoothing", self.label_smoothing, Range(0, 1, high_open=True))
        check_range("train.fine_tune_epochs", self.fine_tune_epochs, AT_LEAST_0)
        check_range("train.fine_tune_layers", self.fine_tune_layers, AT_LEAST_1)
        check_range("train.fine_tune_lr_factor", self.fine_tune_lr_factor, Range(0, 1, low_open=True))
        for name in ("batch_size", "epochs"):
            check_range(f"train.{name}", getattr(self, name), AT_LEAST_1)
        for name in ("patience", "lr_patience"):
            check_range(f"train.{name}", getattr(self, name), AT_LEAST_0)
        check_range("train.lr_factor", self.lr_factor, Range(0, 1, low_open=True))
        require(self.device in ("auto", "cpu", "gpu"), "train.device", "must be auto, cpu or gpu")
        require(self.mixed_precision in ("auto", "on", "off"), "train.mixed_precision", "must be auto, on or off")


TRACKER_KINDS = ("mlflow", "none")  # tracking.make_tracker's implementations
PROMOTIONS = ("significant", "better")  # tracking.promotion: how a new model takes the champion alias
CHAMPION = "champion"  # the registry alias of the model that is served (tracking.champion_*)


@dataclass
class TrackingConfig:
    """Which tracker records runs (mlflow or none), where, and when a model becomes the champion."""

    kind: str = MISSING
    uri: Optional[str] = MISSING
    experiment: str = MISSING
    model_name: str = MISSING
    champion_metric: str = MISSING
    champion_target: float = MISSING
    promotion: str = MISSING
    alpha: float = MISSING
    parent_run: Optional[str] = MISSING  # a run (op-classifier repeat's) that every stage's run nests under

    def __post_init__(self) -> None:
        require(self.kind in TRACKER_KINDS, "tracking.kind", f"'{self.kind}' is not one of {', '.join(TRACKER_KINDS)}")
        check_range("tracking.champion_target", self.champion_target, UNIT)
        require(
            self.promotion in PROMOTIONS,
            "tracking.promotion",
            f"'{self.promotion}' is not one of {', '.join(PROMOTIONS)}",
        )
        require(0.0 < self.alpha < 1.0, "tracking.alpha", f"must be between 0 and 1 (exclusive), not {self.alpha}")
        require(bool(self.experiment.strip()), "tracking.experiment", "must name an experiment")
        name = self.model_name
        require(  # MLflow's registry refuses these, but only when evaluate registers: after the training
            bool(name.strip()) and not set(name) & set("/:") and name not in (".", ".."),
            "tracking.model_name",
            f"'{name}' cannot be a registered model's name (MLflow's registry takes no '/' or ':')",
        )


@dataclass
class AuditConfig:
    """The audit stage: cleanlab over which backbone's features, with how many folds of heads."""

    backbone: str = MISSING  # a conf/model/<name>.yaml of a pretrained model: its features, whatever model= says
    folds: int = MISSING
    batch_size: int = MISSING
    shown: int = MISSING  # images of each kind the audit's gallery shows

    def __post_init__(self) -> None:
        check_range("audit.folds", self.folds, Range(2))
        check_range("audit.batch_size", self.batch_size, AT_LEAST_1)
        check_range("audit.shown", self.shown, AT_LEAST_0)


QUANTIZE = ("none", "float16", "int8")  # serving/export.py's LiteRT conversions


@dataclass
class ExportConfig:
    """How `op-classifier export` writes a LiteRT file: its quantisation, and int8's calibration sample."""

    quantize: str = MISSING
    calibration_images: int = MISSING

    def __post_init__(self) -> None:
        require(self.quantize in QUANTIZE, "export.quantize", f"'{self.quantize}' is not one of {', '.join(QUANTIZE)}")
        check_range("export.calibration_images", self.calibration_images, AT_LEAST_1)


@dataclass
class Config:
    """The whole composed config, as params.yaml holds it."""

    seed: int = MISSING
    paths: PathsConfig = MISSING
    data: DataConfig = MISSING
    model: Any = MISSING  # an architecture's schema, chosen by model.name (models/)
    tuner: TunerConfig = MISSING
    train: TrainConfig = MISSING
    tracking: TrackingConfig = MISSING
    export: ExportConfig = MISSING
    audit: AuditConfig = MISSING

    def __post_init__(self) -> None:
        check_range("seed", self.seed, SEED)
        classes = self.data.classes
        _check_metric("train.monitor", self.train.monitor, classes)
        _check_metric("tuner.objective", self.tuner.objective, classes)
        wanted = "min" if metric_names.is_loss(self.tuner.objective) else "max"
        require(
            self.tuner.direction == wanted,
            "tuner.direction",
            f"must be {wanted} for objective {self.tuner.objective}, got {self.tuner.direction}",
        )
        self._check_search_space()
        self._check_weights_place()

    def _check_weights_place(self) -> None:
        """A weights file lies under paths.weights, which dvc.yaml declares: replacing it re-runs tune and train."""
        if getattr(self.model, "weights", None) in (None, "imagenet"):
            return  # none, or ImageNet's from an installed package or Keras's download
        source = self.model.weights_file()
        require(
            in_weights_folder(self.paths, source),
            "model.weights",
            f"keep the file under {self.paths.weights}/ (paths.weights, a DVC dependency of tune and train), not {source}",
        )

    def _check_search_space(self) -> None:
        """Every entry names a key of this model, within its rule; cross-key checks (shapes) for the
        configured model and for every extreme the search can draw."""
        space = (
            {k: v for k, v in self.tuner.search_space.items() if k != ARCHITECTURE} if self.tuner.kind != "none" else {}
        )
        rules = self.model.rules()
        for name, spec in self.tuner.search_space.items():
            if name == ARCHITECTURE:
                _check_architecture_choice(spec)
            elif name in TRAIN_SEARCH_RULES:
                pretrained = getattr(self.model, "weights", None) is not None
                check_train_search_param(f"tuner.search_space.{name}", name, spec, pretrained)
            else:
                check_search_param(f"tuner.search_space.{name}", name, spec, rules)
        configured = {name: [getattr(self.model, name, None)] for name in self.model.args()}
        self.model.check(self.data.image_size, configured, lambda *keys: f"model.{keys[0]}")
        drawn = {
            name: [v for _, v in drawable(space[name])] if name in space else values
            for name, values in configured.items()
        }

        def where(*keys: str) -> str:
            return f"tuner.search_space.{next((k for k in keys if k in space), keys[0])}"

        if any(name in space for name in configured):
            self.model.check(self.data.image_size, drawn, where)


def in_weights_folder(paths: PathsConfig, file: Path) -> bool:
    """Whether a weights file lies under paths.weights, the folder dvc.yaml declares for tune and train."""
    return Path(paths.weights).resolve() in Path(file).resolve().parents


def validate(raw: Any) -> Config:
    """Check a plain or OmegaConf mapping against the schema and return the typed config."""

    def merge() -> DictConfig:
        schema = _model_schema(OmegaConf.select(OmegaConf.create(raw), "model.name", default=None))
        return OmegaConf.merge(OmegaConf.structured(Config), {"model": OmegaConf.structured(schema)}, raw)

    return _typed(merge)


def validate_model(section: Any) -> ModelBase:
    """Check one model section (a mapping with its `name`) against its architecture's schema."""
    schema = _model_schema(section.get("name"))
    return _typed(lambda: OmegaConf.merge({"model": OmegaConf.structured(schema)}, {"model": section}))["model"]


def _typed(merge: Callable[[], DictConfig]) -> Any:
    """The merged config as objects; an OmegaConf or value error is one line naming the key."""
    try:
        merged = merge()
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{missing[0]}: missing value")
        check_finite(OmegaConf.to_container(merged, resolve=True))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(describe(error)) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(first_line(error)) from None


def _model_schema(name: Any) -> type:
    """The schema of the architecture `model.name` names (models/ registers them)."""
    require(isinstance(name, str), "model.name", "missing: name an architecture (conf/model/<name>.yaml)")
    return models.get(name).params


def compose(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> DictConfig:
    """Compose conf/ with Hydra overrides, exactly as DVC's Hydra composition does; checked against the schema.

    DVC's composition (`dvc exp run -S`) is checked too: see src/hydra_plugins/op_classifier_compose.py.
    """
    return _composed(overrides, conf_dir)[0]


def load(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> Config:
    """conf/ composed with the overrides, as the typed config a command runs with (validated once)."""
    return _composed(overrides, conf_dir)[1]


def _composed(overrides: Sequence[str], conf_dir: Path | None) -> tuple[DictConfig, Config]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    conf_dir = project_conf(conf_dir)
    try:
        with initialize_config_dir(str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(composition_error(error)) from None
    return cfg, validate(cfg)  # validated here too: the Hydra plugin may not be installed


def project_conf(conf_dir: Path | None = None) -> Path:
    """The project's conf/ folder (default: the working folder's), which must hold config.yaml."""
    conf_dir = (conf_dir or Path.cwd() / CONF_DIR).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(f"no {CONF_DIR}/config.yaml in {conf_dir.parent}: run from the project root")
    return conf_dir


def check_paths_inside(paths: PathsConfig, root: Path) -> None:
    """Every configured path lies inside the project: DVC tracks nothing outside it (it fails after the
    stage has run and written there), and `paths.weights=/` would make any file a tracked weights file."""
    top = root.resolve()
    for key, value in vars(paths).items():
        require(
            top in (top / value).resolve().parents,
            f"paths.{key}",
            f"{value} is not inside the project ({top}): DVC tracks only paths inside it",
        )


def to_yaml(cfg: DictConfig) -> str:
    """Serialise a composed config the way DVC writes params.yaml."""
    return OmegaConf.to_yaml(cfg)


def load_params(path: Path = Path(PARAMS_FILE)) -> Config:
    """Read and validate params.yaml (what `dvc repro` runs the stages with); its paths stay beside it."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `op-classifier compose` in the project root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({first_line(error)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = validate(raw)
    check_paths_inside(cfg.paths, path.resolve().parent)
    return cfg


def as_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested plain dicts (for logging and hashing)."""
    return dataclasses.asdict(cfg)
