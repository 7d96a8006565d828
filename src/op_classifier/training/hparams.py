"""From config to model arguments: the search space as Keras Tuner hyperparameters, tuned values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from op_classifier.config import (
    ARCHITECTURE,
    Config,
    ConfigError,
    ModelBase,
    TrainConfig,
    as_dict,
    validate_model,
)
from op_classifier.data.prepared import data_hash
from op_classifier.errors import DataError
from op_classifier.schema import TRAIN_SEARCH_RULES, SearchParam
from op_classifier.training import state

# What a search's result depends on besides the data: the tune stage's params (dvc.yaml declares them).
SEARCH_PARAMS = ("seed", "data.image_size", "model", "tuner")
# A search of a pretrained model's head alone trains each trial as train's head phase does: its result
# depends on these keys of train's too (not on the fine-tuning's).
HEAD_PHASE_PARAMS = (
    "train.learning_rate",
    "train.batch_size",
    "train.epochs",
    "train.patience",
    "train.optimizer",
    "train.weight_decay",
    "train.schedule",
    "train.warmup_epochs",
    "train.label_smoothing",
)
HEAD_SEARCH_PARAMS = (*SEARCH_PARAMS, *HEAD_PHASE_PARAMS)
# A search of the fine-tuning trains each trial's head as the head phase does, then fine-tunes it as
# train's fine-tuning phase does (for the keys it does not draw): its result depends on these too.
FINE_TUNE_SEARCH_PARAMS = (
    *HEAD_SEARCH_PARAMS,
    "train.monitor",
    "train.fine_tune_layers",
    "train.fine_tune_lr_factor",
)
HEAD_KEYS = ("dropout", "learning_rate")  # what a pretrained model's head takes: searchable on features


def searches_head(cfg: Config) -> bool:
    """A search of the head alone on the frozen backbone's features, computed once: a pretrained model
    (frozen while its head learns), one architecture, and only the head's keys searched."""
    space = cfg.tuner.search_space
    pretrained = getattr(cfg.model, "weights", None) is not None
    return cfg.tuner.kind != "none" and pretrained and ARCHITECTURE not in space and set(space) <= set(HEAD_KEYS)


# The train keys a search of the fine-tuning hands train. Not its length: trials are ranked on short
# budgets (Hyperband's), the pick then fine-tunes for train.fine_tune_epochs.
TRAIN_KEYS = tuple(TRAIN_SEARCH_RULES)


def searches_fine_tune(cfg: Config) -> bool:
    """A search of whole pretrained models, each trial training its head on cached features and then
    fine-tuning with drawn train keys (experiment=full_search)."""
    return cfg.tuner.kind != "none" and any(key in cfg.tuner.search_space for key in TRAIN_SEARCH_RULES)


def search_params(cfg: Config) -> tuple[str, ...]:
    """The params sections this config's search depends on."""
    if searches_fine_tune(cfg):
        return FINE_TUNE_SEARCH_PARAMS
    return HEAD_SEARCH_PARAMS if searches_head(cfg) else SEARCH_PARAMS


def model_args(cfg: ModelBase) -> dict[str, Any]:
    """The builder's keyword arguments as the model config sets them (the rest come from the data)."""
    augment = vars(cfg.augment)  # flip, rotation, zoom: builders take them flat
    return {name: augment[name] if name in augment else getattr(cfg, name) for name in cfg.args()}


def check_space(space: Mapping[str, SearchParam], model: ModelBase) -> None:
    """Refuse a search-space entry that names nothing the model or the optimiser takes."""
    tunable = (*model.args(), "learning_rate", ARCHITECTURE, *TRAIN_SEARCH_RULES)
    for name in space:
        if name not in tunable:
            raise ConfigError(f"tuner.search_space.{name}: not a tunable name (one of {', '.join(tunable)})")


def declare(hp: Any, space: Mapping[str, SearchParam]) -> dict[str, Any]:
    """Declare every search-space entry on Keras Tuner's HyperParameters; return the drawn values."""
    values = {}
    for name, spec in space.items():
        if spec.type == "int":
            values[name] = hp.Int(
                name, int(spec.min), int(spec.max), step=int(spec.step or 1), sampling=spec.sampling or "linear"
            )
        elif spec.type == "float":
            values[name] = hp.Float(name, spec.min, spec.max, step=spec.step, sampling=spec.sampling or "linear")
        elif spec.type == "choice":
            values[name] = hp.Choice(name, list(spec.values))
        else:
            values[name] = hp.Boolean(name)
    return values


def search_record(cfg: Config) -> dict[str, Any]:
    """What a search with this config is made with: its search params and the prepared data's hash."""
    return {"params": state.select(as_dict(cfg), search_params(cfg)), "data": data_hash(Path(cfg.paths.prepared))}


def write_best(
    path: Path,
    values: Mapping[str, Any],
    score: float | None,
    tuning_run_id: str | None,
    architecture: Mapping[str, Any] | None = None,
    made_with: Mapping[str, Any] | None = None,
    why: str | None = None,
) -> None:
    """Record the tuned values for the train stage (and the drawn architecture's section, when searched)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"values": dict(values), "score": score, "tuning_run_id": tuning_run_id}
    if why is not None:
        record["why"] = why
    if architecture is not None:
        record["architecture"] = dict(architecture)
    if made_with is not None:
        record["made_with"] = dict(made_with)
    path.write_text(yaml.safe_dump(record, sort_keys=True), encoding="utf-8")


def read_best(path: Path, made_with: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The tune stage's record: {values, score, tuning_run_id}; with made_with, tuned values only if
    that search made them.

    Run stage by stage (`op-classifier train key=value`), an old record would otherwise hand its tuned
    values to a config that was never searched. A record without values (tuner=none) tunes nothing.
    """
    if not path.is_file():
        raise DataError(f"{path} not found: run the tune stage first (`dvc repro tune`)")
    record = yaml.safe_load(path.read_text(encoding="utf-8"))
    recorded = record.get("made_with")
    if made_with is None or not record.get("values"):
        return record
    changed = ["the search's record"] if recorded is None else state.differences(recorded, made_with)
    if changed:
        raise DataError(
            f"{path} comes from another search ({', '.join(changed[:6])} changed since): run the tune "
            "stage with this config first (`dvc repro tune`, or `op-classifier tune` with the same overrides)"
        )
    return record


def final_args(model_cfg: ModelBase, train_cfg: TrainConfig, tuned: Mapping[str, Any]) -> tuple[dict, float]:
    """Model arguments and learning rate for training: config, with every tuned key taking its value."""
    args = {**model_args(model_cfg), **{k: v for k, v in tuned.items() if k in model_cfg.args()}}
    return args, float(tuned.get("learning_rate", train_cfg.learning_rate))


def tuned_train(train_cfg: TrainConfig, tuned: Mapping[str, Any]) -> TrainConfig:
    """The training recipe to train with: config, with every tuned train key (a fine-tuning search's) taking its value."""
    return dataclasses.replace(train_cfg, **{key: tuned[key] for key in TRAIN_KEYS if key in tuned})


def trained_model(model_cfg: ModelBase, best: Mapping[str, Any]) -> ModelBase:
    """The model section to train: the config's, or the searched architecture's when the search drew another."""
    drawn = (best.get("values") or {}).get(ARCHITECTURE)
    if drawn is None or drawn == model_cfg.name:
        return model_cfg
    section = best.get("architecture")
    if not section:
        raise DataError(f"best_hparams.yaml names architecture {drawn} without its section: run the tune stage again")
    return validate_model(section)  # an architecture removed since the search: one line naming it
