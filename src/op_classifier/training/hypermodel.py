"""The search's hypermodel: the architectures a trial may build, the values Keras Tuner draws onto them,
and how a trial trains (HyperModel.fit: quiet Keras, one short line an epoch, stopped early).

A search of a pretrained model's head alone (HeadTrials) builds the head by itself over the frozen
backbone's features, compiled as train's head phase is; the features come first (search_data), so the
hypermodel is whole once made (of_config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from op_classifier import progress
from op_classifier.config import ARCHITECTURE, Config, ModelBase, TrainConfig, load
from op_classifier.data.prepared import load_manifest
from op_classifier.data.stream import split_stream
from op_classifier.metric_names import ACCURACY, VALIDATION_PREFIX, is_loss
from op_classifier.models import get as architecture
from op_classifier.models.common.compile import compile_model
from op_classifier.models.common.cost import multiply_adds
from op_classifier.schema import SearchParam
from op_classifier.training import features, hparams, recipe
from op_classifier.training.leaderboard import SearchData
from op_classifier.training.phases import frozen_backbone, unfreeze_top

# Builder arguments that do not change a model's multiply-adds.
UNCOSTED = frozenset({"dropout", "flip", "rotation", "zoom", "seed", "weights"})


@dataclass(frozen=True)
class Candidate:
    """An architecture the search may build: its model section and its own search-space entries."""

    section: ModelBase
    space: dict[str, SearchParam]


@dataclass(frozen=True)
class HeadTrials:
    """A search of the head alone: each trial trains as train's head phase does, on the same features."""

    train: TrainConfig
    steps: int  # batches an epoch
    objective: str  # the one metric a trial must report (with accuracy)
    dim: int  # the features' width (search_data computed them)


@dataclass(frozen=True)
class FineTuneTrials:
    """A search of the fine-tuning (experiment=full_search): each trial trains its head as train's head
    phase does, on its backbone's features (computed once a backbone: the feature cache), then fine-tunes
    the backbone's top layers with the drawn train keys for the epochs its tuner gives it."""

    train: TrainConfig
    prepared: Path


def search_data(cfg: Config, classes: Sequence[str]) -> SearchData:
    """The prepared splits; for a search of the head alone, their features through the frozen backbone."""
    prepared = Path(cfg.paths.prepared)
    if not hparams.searches_head(cfg):
        val = split_stream(prepared, "val", cfg.tuner.batch_size)
        return SearchData(split_stream(prepared, "train", cfg.tuner.batch_size, seed=cfg.seed), val, val, val.labels)
    args = {**hparams.model_args(cfg.model), **fixed_args(cfg, classes)}
    train, val = features.compute_all(architecture(cfg.model.name).build(**args), prepared, cfg.train.batch_size)
    return SearchData(features.FeatureStream(train, cfg.train.batch_size, cfg.seed), (val.x, val.y), val.x, val.y)


def fixed_args(cfg: Config, classes: Sequence[str]) -> dict[str, Any]:
    """The builder's arguments no trial draws."""
    return {"num_classes": len(classes), "image_size": cfg.data.image_size, "seed": cfg.seed}


def of_config(cfg: Config, classes: Sequence[str], data: SearchData) -> SearchModel:
    """The search's hypermodel, whole: every candidate architecture composed and checked, a head's
    features' width (from `data`), and a trial's epochs and patience (the head phase's for a head)."""
    found, shared, choice = candidates(cfg)
    head_search, fine_tune = None, None
    if hparams.searches_fine_tune(cfg):
        fine_tune = FineTuneTrials(cfg.train, Path(cfg.paths.prepared))
    elif hparams.searches_head(cfg):
        rows = load_manifest(Path(cfg.paths.prepared))["counts"]["train"]
        head_search = HeadTrials(cfg.train, -(-rows // cfg.train.batch_size), cfg.tuner.objective, data.val_x.shape[1])
    training = cfg.train if head_search else cfg.tuner  # a head's trial trains as the head phase; any other, as tuner.*
    trials = Trials(training.epochs, training.patience, cfg.tuner.objective, cfg.tuner.direction)
    learning_rate = cfg.train.learning_rate if fine_tune else cfg.tuner.learning_rate  # a trial's head: train's
    return SearchModel(
        found, shared, choice, fixed_args(cfg, classes), learning_rate, classes, trials, head_search, fine_tune
    )


@dataclass(frozen=True)
class Trials:
    """How long a trial trains: its epochs (Hyperband sets its own), stopped after `patience` epochs
    without a better `objective`."""

    epochs: int
    patience: int
    objective: str
    direction: str


class SearchModel(kt.HyperModel):
    """Keras Tuner's hypermodel: its hyperparameters onto the builder's arguments and the learning rate.

    With `tuner.search_space.name`, it draws the architecture first; each architecture's own entries
    are declared in its conditional scope (as `<name>.<key>`), so a trial holds only the drawn one's.
    """

    def __init__(
        self,
        candidates: Mapping[str, Candidate],
        shared: Mapping[str, SearchParam],
        choice: SearchParam | None,
        fixed: Mapping[str, Any],
        learning_rate: float,
        class_names: Sequence[str],
        trials: Trials,
        head_search: HeadTrials | None = None,
        fine_tune: FineTuneTrials | None = None,
    ) -> None:
        super().__init__()
        self.fine_tune = fine_tune  # each candidate's head, then its fine-tuning (else None)
        self._costs: dict[str, int] = {}  # multiply-adds by architecture and shaping arguments
        self.head_search = (
            head_search  # each candidate is the head alone, trained on the backbone's features (else None)
        )
        self.candidates = dict(candidates)
        self.shared = dict(shared)
        self.choice = choice
        self.fixed = dict(fixed)  # num_classes, image_size, seed
        self.learning_rate = learning_rate
        self.class_names = list(class_names)
        self.trials = trials

    def draw(self, hp: Any) -> tuple[str, dict[str, Any]]:
        """The architecture and the values Keras Tuner drew (unprefixed)."""
        values = hparams.declare(hp, self.shared)
        if self.choice is None:
            (name,) = self.candidates
            return name, values
        name = hp.Choice(ARCHITECTURE, list(self.choice.values))
        with hp.conditional_scope(ARCHITECTURE, [name]):
            own = hparams.declare(hp, {f"{name}.{key}": spec for key, spec in self.candidates[name].space.items()})
        return name, {**values, **own_values(own, name)}

    def build(self, hp: Any) -> keras.Model:
        """Build and compile one candidate with the values Keras Tuner drew."""
        name, values = self.draw(hp)
        # Unsearched, a head's trial takes the head phase's rate; any other candidate, the tuner's.
        learning_rate = values.pop(
            "learning_rate", self.head_search.train.learning_rate if self.head_search else self.learning_rate
        )
        args = self.builder_args(name, values)
        if self.head_search is not None:
            head = features.head_model(self.head_search.dim, args["num_classes"], args["dropout"], args["seed"])
            # Only the objective (and accuracy) is computed: the per-class metrics would double a trial's time.
            wanted = {ACCURACY, self.head_search.objective.removeprefix(VALIDATION_PREFIX)}
            return recipe.compile_as_trained(
                head, self.head_search.train, self.class_names, learning_rate, self.head_search.steps, only=wanted
            )

        return compile_model(
            architecture(self.candidates[name].section.name).build(**args), learning_rate, self.class_names
        )

    def multiply_adds(self, values: Mapping[str, Any]) -> int:
        """A trial's model's multiply-adds an image (Keras Tuner's values): built without weights, once
        each architecture and shape."""
        searched = self.searched(values)
        name = searched.get(ARCHITECTURE, next(iter(self.candidates)))
        args = self.builder_args(name, searched)
        if "weights" in args:
            args["weights"] = None
        key = repr(sorted((k, v) for k, v in args.items() if k not in UNCOSTED) + [("name", name)])
        if key not in self._costs:
            self._costs[key] = multiply_adds(architecture(self.candidates[name].section.name).build(**args))
        return self._costs[key]

    def builder_args(self, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Candidate `name`'s builder arguments: its section's, the data's, and the drawn model keys."""
        section = self.candidates[name].section
        drawn = {key: value for key, value in values.items() if key in section.args()}
        return {**hparams.model_args(section), **self.fixed, **drawn}

    def fit(self, hp: Any, model: keras.Model, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        """One trial's training: Keras quiet, stopped early, one short line an epoch (none for a head's
        trial, which takes seconds: the tuner prints its one line)."""
        trials = self.trials
        if self.fine_tune is not None:
            self.train_head(hp, model)
        stop = keras.callbacks.EarlyStopping(monitor=trials.objective, mode=trials.direction, patience=trials.patience)
        lines = [] if self.head_search else [progress.epoch_lines(trials.objective)]
        kwargs |= {"verbose": 0, "callbacks": [*kwargs.get("callbacks", []), stop, *lines]}
        kwargs.setdefault("epochs", trials.epochs)
        return model.fit(*args, **kwargs)

    def train_head(self, hp: Any, model: keras.Model) -> None:
        """A fine-tuning trial's start: its head on the frozen backbone's features (none when Hyperband
        promoted it: the weights it ended its last round with are loaded), then its top layers unfrozen
        and compiled at the fine-tuning's rate with the drawn train keys."""
        values = self.searched(hp.values)
        train = hparams.tuned_train(self.fine_tune.train, values)
        if "tuner/trial_id" not in hp.values:
            found_train, val = features.compute_all(model, self.fine_tune.prepared, train.batch_size)
            head = features.head_of(model)
            stream = features.FeatureStream(found_train, train.batch_size, self.fixed["seed"])
            rate = values.get("learning_rate", train.learning_rate)
            recipe.compile_as_trained(head, train, self.class_names, rate, steps=len(stream))
            mode = "min" if is_loss(train.monitor) else "max"
            stop = keras.callbacks.EarlyStopping(
                train.monitor, patience=train.patience, mode=mode, restore_best_weights=True
            )
            head.fit(
                stream, validation_data=(val.x, val.y), epochs=train.epochs, shuffle=False, verbose=0, callbacks=[stop]
            )
        unfreeze_top(frozen_backbone(model), train.fine_tune_layers)  # frozen as built, promoted or not
        rate = train.learning_rate * train.fine_tune_lr_factor  # from the configured rate, as train's phases do
        wanted = {ACCURACY, self.trials.objective.removeprefix(VALIDATION_PREFIX)}
        recipe.compile_as_trained(model, train, self.class_names, rate, steps=0, only=wanted)

    def searched(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Drawn values by their config names (Hyperband adds `tuner/...` bookkeeping; dropped)."""
        shared = {key: value for key, value in values.items() if key in self.shared}
        if self.choice is None:
            return shared
        name = values[ARCHITECTURE]
        return {ARCHITECTURE: name, **shared, **own_values(values, name)}


def own_values(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Architecture `name`'s drawn values (`<name>.<key>` in Keras Tuner) by their model keys."""
    prefix = f"{name}."
    return {key[len(prefix) :]: value for key, value in values.items() if key.startswith(prefix)}


def candidates(cfg: Config) -> tuple[dict[str, Candidate], dict[str, SearchParam], SearchParam | None]:
    """The architectures the search may build, the entries they share, and the architecture choice (if any).

    The configured architecture brings its section and entries from this config; any other the choice
    names, from its conf/model/<name>.yaml (a dep of this stage in dvc.yaml), at this data.image_size.
    """
    space = dict(cfg.tuner.search_space)
    choice = space.pop(ARCHITECTURE, None)
    if choice is None:
        return {cfg.model.name: Candidate(cfg.model, {})}, space, None
    own = {key: spec for key, spec in space.items() if key in cfg.model.args()}
    shared = {key: spec for key, spec in space.items() if key not in own}
    found = {}
    for name in choice.values:
        if name == cfg.model.name:
            found[name] = Candidate(cfg.model, own)
            continue
        other = load((f"model={name}", f"data.image_size={cfg.data.image_size}"))
        own_space = {k: v for k, v in other.tuner.search_space.items() if k in other.model.args()}
        if other.model.name == cfg.model.name:  # a variant of the configured architecture (lite2 of lite0's):
            own_space |= own  # the configured entries apply to it too, each drawn on its own
        found[name] = Candidate(other.model, own_space)
    return found, shared, choice
