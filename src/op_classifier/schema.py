"""The schema's vocabulary, shared by config.py and every architecture's schema (models/): ranges,
rules, the one-line check, the model section every architecture extends, and a search-space entry
with the checks that need no registry.

It imports neither config nor models, so both can import it without a loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from op_classifier.errors import ConfigError, first_line


def hydra_message(text: str) -> str:
    """Hydra's first line, plus the available options when it lists them."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        options = [line for line in lines[2:] if not line.startswith(("Config search path", "provider="))]
        return f"{lines[0]} (available: {', '.join(options)})"
    return lines[0] if lines else "invalid override"


def describe(error: OmegaConfBaseException) -> str:
    """`<full.key>: <what is wrong>` for an OmegaConf error."""
    key = getattr(error, "full_key", None) or "config"
    unknown = isinstance(error, (ConfigKeyError, ConfigAttributeError)) and "MISSING" not in str(error)
    return f"{key}: {'unknown key' if unknown else first_line(error)}"


def check_finite(tree: Any, key: str = "") -> None:
    """No infinity or NaN anywhere: inf passes "positive", and no training survives either."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        require(not (isinstance(tree, float) and not math.isfinite(tree)), key, f"must be a finite number, got {tree}")
        return
    for name, value in items:
        check_finite(value, f"{key}.{name}" if key and isinstance(name, str) else f"{key}[{name}]" if key else name)


def composition_error(error: Exception) -> str:
    """One line naming the key for an error Hydra or OmegaConf raised while composing."""
    for candidate in (error.__cause__, error):
        if isinstance(candidate, OmegaConfBaseException) and getattr(candidate, "full_key", None):
            return describe(candidate)
    return hydra_message(str(error))


def require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError `<key>: <message>` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; an open end excludes its bound, a None end is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """`between 0 and 1`, `at least 1`, `positive`, ...: what `must be` is followed by."""
        low, high = (None if x is None else number_text(x) for x in (self.low, self.high))
        if high is None:
            return ("positive" if self.low == 0 else f"above {low}") if self.low_open else f"at least {low}"
        if low is None:
            return f"below {high}" if self.high_open else f"at most {high}"
        if self.low_open == self.high_open:
            return f"between {low} and {high}" + (" (exclusive)" if self.low_open else "")
        above = f"above {low}" if self.low_open else f"at least {low}"
        return f"{above} and {f'below {high}' if self.high_open else f'at most {high}'}"


def check_range(key: str, value: float, allowed: Range) -> None:
    require(value in allowed, key, f"must be {allowed.describe()}, got {number_text(value)}")


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
UNIT = Range(0, 1)  # [0, 1]
FRACTION = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
IMAGE_SIDE = Range(8, 4096)
SEED = Range(0, 2**32 - 1)  # what NumPy and Keras accept as a seed


@dataclass(frozen=True)
class Rule:
    """What one model key (or the learning rate) takes: checked on the config and on every value the
    search space can give it, so no candidate the tuner draws fails inside Keras."""

    kind: type  # int, float, bool, str, or list (of ints)
    allowed: Range | None = None  # the value's range (of each item for a list)
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (the text after `must be`), or None."""
        if value is None and self.nullable:
            return None
        if self.kind is list:
            items = list(value) if isinstance(value, (list, tuple)) else None
            ok = bool(items) and all(_is_int(item) and item in self.allowed for item in items)
            return None if ok else f"must be a non-empty list of integers, each {self.allowed.describe()}, got {value}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value}"
        if self.kind is str:
            return None if isinstance(value, str) else f"must be a string, got {value}"
        if not (_is_int(value) if self.kind is int else _is_number(value)):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value}"
        if self.allowed is not None and value not in self.allowed:
            return f"must be {'null or ' if self.nullable else ''}{self.allowed.describe()}, got {number_text(value)}"
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What the keys every architecture may take (and the learning rate) allow; an architecture's own keys
# are in its schema's RULES (models/<name>.py). A test keeps every tunable name ruled.
COMMON_RULES: dict[str, Rule] = {
    "dropout": Rule(float, Range(0, 1, high_open=True)),
    "l2": Rule(float, AT_LEAST_0),
    "flip": Rule(bool),
    "rotation": Rule(float, UNIT),
    "zoom": Rule(float, UNIT),
    "resize": Rule(int, IMAGE_SIDE, nullable=True),
    "learning_rate": Rule(float, POSITIVE),
}


# train.* keys a search of a pretrained model's fine-tuning may draw (experiment=full_search): each trial
# trains the head, then fine-tunes with them; train takes the pick's values.
TRAIN_SEARCH_RULES: dict[str, Rule] = {
    "fine_tune_layers": Rule(int, AT_LEAST_1),
    "fine_tune_lr_factor": Rule(float, Range(0, 1, low_open=True)),
    "label_smoothing": Rule(float, Range(0, 1, high_open=True)),
}


def check_train_search_param(key: str, name: str, spec: SearchParam, pretrained: bool) -> None:
    """A train key in the search space: searched for a pretrained model's fine-tuning only, within its rule."""
    require(pretrained, key, "the fine-tuning is searched for a pretrained model only (model.weights set)")
    check_search_param(key, name, spec, TRAIN_SEARCH_RULES)


def check_rule(key: str, name: str, value: Any, rules: dict[str, Rule] | None = None) -> None:
    problem = (rules or COMMON_RULES)[name].problem(value)
    require(problem is None, key, problem or "")


@dataclass
class AugmentConfig:
    """Random augmentation applied inside the model while training."""

    flip: bool = MISSING
    rotation: float = MISSING
    zoom: float = MISSING

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom"):
            check_rule(f"model.augment.{name}", name, getattr(self, name))


@dataclass
class ModelBase:
    """What every architecture's section has; each architecture's schema subclasses it (models/)."""

    RULES: ClassVar[dict[str, Rule]] = {}  # the architecture's own keys (COMMON_RULES has the shared ones)
    name: str = MISSING
    augment: AugmentConfig = MISSING

    @classmethod
    def args(cls) -> tuple[str, ...]:
        """The builder's keyword arguments from config: this schema's keys, augment's flat."""
        own = [item.name for item in dataclasses.fields(cls) if item.name not in ("name", "augment")]
        return (*own, *(item.name for item in dataclasses.fields(AugmentConfig)))

    @classmethod
    def rules(cls) -> dict[str, Rule]:
        """What each tunable name (the builder's arguments and the learning rate) allows."""
        known = {**COMMON_RULES, **cls.RULES}
        return {name: known[name] for name in (*cls.args(), "learning_rate")}

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if item.name not in ("name", "augment"):
                check_rule(f"model.{item.name}", item.name, getattr(self, item.name), self.rules())

    def check(self, image_size: int, drawn: dict[str, list[Any]], where: Callable[..., str]) -> None:
        """Checks across keys (shapes) for every value the search can draw; `where(*keys)` names the key."""

    def weights_file(self) -> Path | None:
        """The file the model's starting weights are read from (None: trained from scratch)."""
        return None


SEARCH_TYPES = ("int", "float", "choice", "bool")
SAMPLINGS = ("linear", "log", "reverse_log")


@dataclass
class SearchParam:
    """One hyperparameter of the search space."""

    type: str = MISSING
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    sampling: Optional[str] = None
    values: Optional[List[Any]] = None


def check_search_param(key: str, name: str, spec: SearchParam, rules: Dict[str, Rule]) -> None:
    """A known name, a well-formed entry, and every value it can draw allowed for that name."""
    require(spec.type in SEARCH_TYPES, f"{key}.type", f"'{spec.type}' is not one of {', '.join(SEARCH_TYPES)}")
    require(name in rules, key, f"not a tunable name of this model (one of {', '.join(rules)})")
    rule = rules[name]
    takes = {int: ("int", "choice"), float: ("int", "float", "choice"), bool: ("bool", "choice")}.get(
        rule.kind, ("choice",)
    )  # filters: a choice of lists
    require(spec.type in takes, f"{key}.type", f"{name} takes {' or '.join(takes)}, not {spec.type}")
    if spec.type in ("int", "float"):
        require(spec.min is not None and spec.max is not None, key, f"type {spec.type} needs min and max")
        for bound in ("min", "max", "step"):
            value = getattr(spec, bound)
            if spec.type == "int" and value is not None:
                require(float(value).is_integer(), f"{key}.{bound}", f"must be whole for type int, got {value}")
        require(spec.min <= spec.max, key, f"min ({number_text(spec.min)}) is above max ({number_text(spec.max)})")
        if spec.step is not None:
            check_range(f"{key}.step", spec.step, POSITIVE)
        if spec.sampling is not None:
            require(
                spec.sampling in SAMPLINGS, f"{key}.sampling", f"'{spec.sampling}' is not one of {', '.join(SAMPLINGS)}"
            )
            require(
                spec.sampling == "linear" or spec.min > 0,
                f"{key}.min",
                f"must be positive for sampling {spec.sampling}, got {number_text(spec.min)}",
            )
    if spec.type == "choice":
        require(bool(spec.values), key, "type choice needs a non-empty values list")
    for bound, value in drawable(spec):
        check_rule(f"{key}.{bound}", name, value, rules)


def drawable(spec: SearchParam) -> list[tuple[str, Any]]:
    """(where it is written, value) for the extreme values an entry can draw (ranges are intervals)."""
    if spec.type == "int":
        return [("min", int(spec.min)), ("max", int(spec.max))]
    if spec.type == "float":
        return [("min", float(spec.min)), ("max", float(spec.max))]
    if spec.type == "choice":
        return [("values", value) for value in spec.values]
    return [("values", True), ("values", False)]
