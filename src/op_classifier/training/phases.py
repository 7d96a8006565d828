"""The final training's phases, planned in one place: the head (on the frozen backbone's features, computed
once, when train.head_on_features; else the whole model with the backbone frozen), then the backbone's top
layers (train.fine_tune_epochs; pretrained models only).

A killed run resumes by phase. phases.json in paths.checkpoints names each finished phase and the epoch it
ended at (the chief writes it whole when a phase ends, after the model's weights at that point, and removes
both once the last phase has); the plan reads it, so a finished phase is not run again and the next starts
where it ended, from those weights; the phase a kill stopped resumes from its own backup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras

from op_classifier.config import Config
from op_classifier.data.stream import split_stream
from op_classifier.models.pretrained import BACKBONE
from op_classifier.training import distributed, features, recipe
from op_classifier.training.callbacks import callbacks
from op_classifier.training.distributed import SINGLE, Cluster

STATE_FILE = "phases.json"  # in paths.checkpoints: {phase name: the epoch it ended at} of the finished ones
HEAD, FINE_TUNE = "head", "fine_tune"


@dataclass(frozen=True)
class Phase:
    """One model.fit: up to `epochs` epochs after the previous phase's last, at its peak `learning_rate`,
    resumable from its `backup` folder in paths.checkpoints. `ended`: the epoch it ended at, when a run
    before this one finished it."""

    name: str
    epochs: int
    learning_rate: float
    backup: str
    on_features: bool = False  # the head alone, on the frozen backbone's features
    unfreeze: int = 0  # the backbone's top layers this phase trains (recompiled, a constant rate)
    ended: int | None = None


def plan(cfg: Config, model: keras.Model, learning_rate: float, cluster: Cluster = SINGLE) -> list[Phase]:
    """The training's phases (the head's at `learning_rate`, the tuned one), those finished by a killed run
    marked with the epoch they ended at."""
    train = cfg.train
    pretrained = frozen_backbone(model) is not None
    # Features are computed by one process: a multi-process run trains the whole model, its share each.
    on_features = pretrained and train.head_on_features and cluster.processes == 1
    phases = [Phase(HEAD, train.epochs, learning_rate, "backup", on_features=on_features)]
    if pretrained and train.fine_tune_epochs:
        # From the configured rate, not the head's tuned one: a search of the head does not move the fine-tuning.
        rate = train.learning_rate * train.fine_tune_lr_factor
        phases.append(Phase(FINE_TUNE, train.fine_tune_epochs, rate, "backup-fine", unfreeze=train.fine_tune_layers))
    done = _read(Path(cfg.paths.checkpoints) / STATE_FILE) if cluster.chief else {}
    ended = {phase.name: distributed.agree(cluster, done.get(phase.name, -1)) for phase in phases}  # the chief's
    return [replace(phase, ended=ended[phase.name]) if ended[phase.name] >= 0 else phase for phase in phases]


def fit(
    cfg: Config,
    model: keras.Model,
    phases: Sequence[Phase],
    logged: keras.callbacks.Callback,
    classes: list[str],
    cluster: Cluster = SINGLE,
) -> dict[str, Any]:
    """Run the phases not yet finished, in order (`logged`: the tracker's epoch callback); the epochs they ran.

    In a multi-process run each process reads its share of every train batch and the whole val split
    (its metrics are then exactly a single process's); all restore the checkpoint, only the chief writes.
    """
    prepared, checkpoints = Path(cfg.paths.prepared), Path(cfg.paths.checkpoints)
    resumed = any(phase.ended is not None or (checkpoints / phase.backup).exists() for phase in phases)
    data = {  # one stream for every phase: its epochs' orders go on from one phase to the next
        "x": distributed.train_stream(prepared, cfg.train.batch_size, cfg.seed, cluster),
        "validation_data": split_stream(prepared, "val", cfg.train.batch_size // cluster.processes),
    }
    ended = {phase.name: phase.ended for phase in phases if phase.ended is not None}
    start = 0
    for before, phase in zip([None, *phases], phases):
        if phase.name not in ended:
            if before is not None and before.ended is not None:  # a killed run finished it: its weights
                model.load_weights(checkpoints / _weights(before))
            fitted = _fit(cfg, model, phase, start, data, logged, classes, cluster)
            ended[phase.name] = fitted.epoch[-1] + 1 if fitted.epoch else start + phase.epochs
            if cluster.chief and phase is not phases[-1]:  # the last phase's end is the training's
                _keep_weights(model, checkpoints / _weights(phase))
                _write(checkpoints / STATE_FILE, ended)
        start = ended[phase.name]
    if cluster.chief:  # all done: the next run trains anew
        for phase in phases:
            (checkpoints / _weights(phase)).unlink(missing_ok=True)
        (checkpoints / STATE_FILE).unlink(missing_ok=True)
    epochs = {"epochs_run": ended[HEAD]}
    if FINE_TUNE in ended:
        epochs["fine_tune_epochs_run"] = ended[FINE_TUNE] - ended[HEAD]
    return {**epochs, "resumed": resumed}


def _fit(
    cfg: Config,
    model: keras.Model,
    phase: Phase,
    start: int,
    data: dict[str, Any],
    logged: keras.callbacks.Callback,
    classes: list[str],
    cluster: Cluster,
) -> Any:
    """One phase's model.fit from epoch `start` (the whole model's, as built and compiled, unless the phase
    says otherwise); its History."""
    if phase.unfreeze:
        unfreeze_top(frozen_backbone(model), phase.unfreeze)
        recipe.compile_as_trained(model, cfg.train, classes, phase.learning_rate, steps=0)
    if phase.on_features:  # the model's own head layers, trained on the backbone's features computed once
        train, val = features.compute_all(model, Path(cfg.paths.prepared), cfg.train.batch_size)
        model = features.head_of(model)
        data = {"x": features.FeatureStream(train, cfg.train.batch_size, cfg.seed), "validation_data": (val.x, val.y)}
        recipe.compile_as_trained(model, cfg.train, classes, phase.learning_rate, steps=len(data["x"]))
    return model.fit(
        **data,
        initial_epoch=start,
        epochs=start + phase.epochs,
        shuffle=False,  # the stream shuffles each epoch itself, from the seed
        callbacks=callbacks(cfg, logged, phase.backup, cluster),
        verbose=0,  # the chief prints its own short line an epoch (progress.epoch_lines)
    )


def frozen_backbone(model: keras.Model) -> keras.Model | None:
    """The model's pretrained backbone while it is still frozen (none for from-scratch models)."""
    return next((layer for layer in model.layers if layer.name == BACKBONE and not layer.trainable), None)


def unfreeze_top(backbone: keras.Model, count: int) -> None:
    """Make the backbone's top `count` layers trainable, BatchNormalization excepted (its ImageNet
    statistics would be overwritten by small batches of a small set)."""
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        top = i >= len(backbone.layers) - count
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)


def _weights(phase: Phase) -> str:
    """The file in paths.checkpoints of the model's weights at the end of `phase`.

    A phase's backup is gone once its fit ends; without these, a run killed before the next phase's
    first backup resumed that phase from a freshly built model, its head untrained, and said nothing.
    """
    return f"{phase.name}.weights.h5"


def _keep_weights(model: keras.Model, path: Path) -> None:
    """The weights whole or not at all, written before phases.json names the phase finished."""
    partial = path.with_name(f"partial-{path.name}")  # Keras wants the .weights.h5 ending
    model.save_weights(partial)
    os.replace(partial, path)


def _read(path: Path) -> dict[str, int]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write(path: Path, ended: dict[str, int]) -> None:
    """Whole or not at all: a kill mid-write leaves the previous file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(ended), encoding="utf-8")
    os.replace(partial, path)
