"""Stage `train`: the final model from config plus the tuned values; saves model.keras and a SavedModel."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from op_classifier import progress
from op_classifier.config import Config, ConfigError, ModelBase, TrainConfig, as_dict
from op_classifier.data.prepared import RUN_FILE, Split, data_hash, dvc_hash, load_manifest, load_split
from op_classifier.data.stream import split_stream
from op_classifier.metric_names import is_loss, metric_names
from op_classifier.models import get as architecture
from op_classifier.models.pretrained import BACKBONE
from op_classifier.runner import stage_main
from op_classifier.tracking import RUN_ID_FILE, NullTracker, Tracker, flatten, git_commit, make_tracker, run_name
from op_classifier.training import distributed, features, hparams, recipe, saving, state
from op_classifier.training.backend import set_random_seed
from op_classifier.training.callbacks import AtomicBackup, HistoryLog, StopOnNonFinite
from op_classifier.training.device import pick_device
from op_classifier.training.distributed import SINGLE, Cluster

# The params sections this stage declares in dvc.yaml: its checkpoint belongs to their values.
PARAMS = ("seed", "data.image_size", "model", "train")
STAGE = "op_classifier.stages.train"  # its state belongs to the code this module runs
HISTORY_FILE = "history.jsonl"  # in paths.checkpoints: every epoch's metrics, across resumes
BACKUP, FINE_BACKUP = "backup", "backup-fine"  # in paths.checkpoints: each phase's resumable state
PHASE_ONE_FILE = "phase-one.json"  # in paths.checkpoints: the head's phase ended after this many epochs


def callbacks(
    cfg: Config, tracker: Tracker, backup: str = BACKUP, cluster: Cluster = SINGLE
) -> list[keras.callbacks.Callback]:
    """Whole history, checkpoint-and-resume, early stopping with best weights, LR decay, tracking.

    In a multi-process run only the chief writes the history and the checkpoint; all restore the checkpoint.
    """
    # Keras cannot tell the direction of our custom `accuracy`; losses fall, every other metric rises.
    mode = "min" if is_loss(cfg.train.monitor) else "max"
    checkpoints = Path(cfg.paths.checkpoints)
    # First: an epoch is in the history before its backup exists, so no resume can lose a row.
    history = [HistoryLog(checkpoints / HISTORY_FILE, Path(cfg.paths.history))] if cluster.chief else []
    return [
        StopOnNonFinite(),  # first: a NaN epoch reaches neither the history nor the backup
        *history,
        # Every process restores the backup (their variables change together), only the chief writes it.
        AtomicBackup(str(checkpoints / backup), writes=cluster.chief),
        *distributed.check_callbacks(cluster),
        keras.callbacks.EarlyStopping(
            monitor=cfg.train.monitor, patience=cfg.train.patience, restore_best_weights=True, mode=mode
        ),
        *_plateau(cfg.train, mode),
        tracker.epoch_callback(),
        *([progress.epoch_lines(cfg.train.monitor)] if cluster.chief else []),
    ]


def _plateau(cfg: TrainConfig, mode: str) -> list[keras.callbacks.Callback]:
    if cfg.schedule != "plateau":  # a cosine schedule owns the learning rate
        return []
    # A tuned learning rate that is right for 8 epochs can be too high for 60: decay on plateaus.
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=cfg.monitor, factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=1e-5, mode=mode
        )
    ]


def fit(
    cfg: Config,
    model: keras.Model,
    tracker: Tracker,
    classes: list[str],
    learning_rate: float,
    cluster: Cluster = SINGLE,
) -> dict:
    """Train (resuming a killed run whose checkpoint matches this config), then fine-tune a pretrained
    backbone's top layers when train.fine_tune_epochs asks; summary of the training.

    In a multi-process run each process reads its share of every train batch and the whole val split
    (its metrics are then exactly a single process's); all restore the checkpoint, only the chief writes.
    """
    prepared = Path(cfg.paths.prepared)
    checkpoints = Path(cfg.paths.checkpoints)
    resuming = any((checkpoints / name).exists() for name in (BACKUP, FINE_BACKUP, PHASE_ONE_FILE))
    data = {
        "x": distributed.train_stream(prepared, cfg.train.batch_size, cfg.seed, cluster),
        "validation_data": split_stream(prepared, "val", cfg.train.batch_size // cluster.processes),
    }
    phase_one = checkpoints / PHASE_ONE_FILE
    # Killed while fine-tuning: the head's phase is done, its result in the backup (-1: not so).
    first = json.loads(phase_one.read_text(encoding="utf-8"))["epochs"] if cluster.chief and phase_one.is_file() else -1
    first = distributed.agree(cluster, first)
    backbone = frozen_backbone(model)
    if first < 0:
        on_features = backbone is not None and cfg.train.head_on_features and cluster.processes == 1
        history = (
            _fit_head(cfg, model, tracker, classes, learning_rate)
            if on_features
            else _fit(cfg, model, tracker, data, BACKUP, 0, cfg.train.epochs, cluster)
        )
        first = history.epoch[-1] + 1 if history.epoch else cfg.train.epochs
    if backbone is None or cfg.train.fine_tune_epochs == 0:
        return {"epochs_run": first, "resumed": resuming}
    if cluster.chief:
        phase_one.write_text(json.dumps({"epochs": first}), encoding="utf-8")
    unfreeze_top(backbone, cfg.train.fine_tune_layers)
    # From the configured rate, not the head's tuned one: a search of the head does not move the fine-tuning.
    recipe.compile_as_trained(
        model, cfg.train, classes, cfg.train.learning_rate * cfg.train.fine_tune_lr_factor, steps=0
    )
    history = _fit(cfg, model, tracker, data, FINE_BACKUP, first, first + cfg.train.fine_tune_epochs, cluster)
    if cluster.chief:
        phase_one.unlink()
    return {"epochs_run": first, "fine_tune_epochs_run": len(history.epoch), "resumed": resuming}


def _fit(
    cfg: Config, model: keras.Model, tracker: Tracker, data: dict, backup: str, start: int, end: int, cluster: Cluster
) -> Any:
    return model.fit(
        **data,
        initial_epoch=start,
        epochs=end,
        shuffle=False,  # the stream shuffles each epoch itself, from the seed
        callbacks=callbacks(cfg, tracker, backup, cluster),
        verbose=0,  # the chief prints its own short line an epoch (progress.epoch_lines)
    )


def _fit_head(cfg: Config, model: keras.Model, tracker: Tracker, classes: list[str], learning_rate: float) -> Any:
    """The head's phase on the frozen backbone's features, computed once: it trains the model's own head layers."""
    prepared = Path(cfg.paths.prepared)
    train, val = features.compute_all(model, prepared, cfg.train.batch_size)
    head = features.head_of(model)
    stream = features.FeatureStream(train, cfg.train.batch_size, cfg.seed)
    recipe.compile_as_trained(head, cfg.train, classes, learning_rate, steps=len(stream))
    return head.fit(
        stream,
        validation_data=(val.x, val.y),
        epochs=cfg.train.epochs,
        shuffle=False,  # the stream shuffles each epoch itself, from the seed
        callbacks=callbacks(cfg, tracker, BACKUP),
        verbose=0,
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


def build(
    cfg: Config,
    classes: list[str],
    tuned: dict[str, Any],
    model_cfg: ModelBase | None = None,
    processes: int = 1,
) -> tuple[keras.Model, dict[str, Any]]:
    """The compiled model (model_cfg, else cfg.model, plus tuned values) on the configured device; its params."""
    model_cfg = model_cfg or cfg.model
    scope, device, policy = pick_device(cfg.train)
    args, learning_rate = hparams.final_args(model_cfg, cfg.train, tuned)
    set_random_seed(cfg.seed)
    with scope:
        model = architecture(model_cfg.name).build(len(classes), cfg.data.image_size, seed=cfg.seed, **args)
        rows = load_manifest(Path(cfg.paths.prepared))["counts"]["train"]
        steps = distributed.steps_per_epoch(rows, cfg.train.batch_size, processes)
        recipe.compile_as_trained(model, cfg.train, classes, learning_rate, steps)
    return model, {
        "device": device if processes == 1 else f"{processes} processes x {device} (JAX DataParallel)",
        "processes": processes,
        "precision_policy": policy,  # what train.mixed_precision chose on this machine
        "learning_rate_used": learning_rate,
        "architecture_used": model_cfg.name,  # model.name, or the architecture the search drew
        "classes": json.dumps(classes),
        **{f"tuned.{k}": v for k, v in tuned.items()},
    }


def claim_checkpoints(
    cfg: Config, tuned: dict[str, Any], model_cfg: ModelBase | None = None, claim: bool = True
) -> dict[str, Any]:
    """Keep the checkpoint folder only if it was made by this config, data, code and tuned values
    (with claim off, only the fingerprint: a multi-process run's other processes touch no file)."""
    prepared = Path(cfg.paths.prepared)
    model_cfg = model_cfg or cfg.model
    drawn = {} if model_cfg is cfg.model else {"architecture": as_dict(model_cfg)}
    made_by = state.fingerprint(
        state.select(as_dict(cfg), PARAMS), data_hash(prepared), STAGE, model_cfg, tuned=tuned, **drawn
    )
    if claim:
        state.claim(Path(cfg.paths.checkpoints), made_by, "training checkpoint", keep=(RUN_ID_FILE,))
    return made_by


def _settings(cfg: Config) -> dict[str, Any]:
    """What tells one training from another in the runs table (every param is logged besides)."""
    chosen = {"tuner": cfg.tuner.kind} if cfg.tuner.kind != "none" else {"learning_rate": cfg.train.learning_rate}
    epochs = cfg.train.epochs + cfg.train.fine_tune_epochs
    return {"model": cfg.model.name, "image_size": cfg.data.image_size, **chosen, "epochs": epochs, "seed": cfg.seed}


def run(cfg: Config) -> dict:
    """Train, export, log the model; record the run for evaluate.

    Under KERAS_DISTRIBUTION_* (distributed.py) this process first joins a multi-process run; then only
    the chief (process 0) writes files and logs, and every process reports its weights' digest.
    """
    started = time.perf_counter()
    cluster = distributed.join(cfg.train.batch_size)  # first: nothing is written before every check passed
    with distributed.fail_fast(cluster):
        return _run(cfg, cluster, started)


def _run(cfg: Config, cluster: Cluster, started: float) -> dict:
    prepared = Path(cfg.paths.prepared)
    classes = load_manifest(prepared, cfg.data.image_size)["classes"]
    if cfg.train.monitor not in metric_names(classes):
        raise ConfigError(f"train.monitor: the model does not report '{cfg.train.monitor}'")
    best = hparams.read_best(Path(cfg.paths.best_hparams), hparams.search_record(cfg))
    tuned = best.get("values") or {}
    model_cfg = hparams.trained_model(cfg.model, best)
    made_by = claim_checkpoints(cfg, tuned, model_cfg, claim=cluster.chief)
    model, described = build(cfg, classes, tuned, model_cfg, cluster.processes)
    tracker = make_tracker(cfg.tracking) if cluster.chief else NullTracker()
    tags = {
        "stage": "train",
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
        "data_hash": made_by["data"],
        "tuning_run_id": best.get("tuning_run_id"),
    }
    params = {**flatten(as_dict(cfg)), **described, "state_fingerprint": made_by["id"]}
    resume = Path(cfg.paths.checkpoints) / RUN_ID_FILE
    with tracker.run(
        run_name("train", _settings(cfg)), resume_file=resume, tags=tags, params=params, system_metrics=True
    ) as run_id:
        manifest = load_manifest(prepared)
        # The data as DVC tracks it (data/raw and its .dvc hash), else as this stage read it (prepared).
        raw = Path(cfg.paths.raw)
        tracked = dvc_hash(raw)
        name, data_digest, source = (raw.name, tracked, raw) if tracked else (prepared.name, made_by["data"], prepared)
        tracker.log_dataset(name, data_digest, source, manifest["counts"], prepared_hash=made_by["data"])
        summary = fit(cfg, model, tracker, classes, described["learning_rate_used"], cluster)
        digest = distributed.weights_digest(model)
        if not cluster.chief:
            return {**summary, "process": cluster.rank, "weights_sha256": digest}
        model = distributed.local_copy(model, cluster)
        with progress.bar(2, "export", unit="step") as bar:  # seconds each: tracing, saving, MLflow's checks
            bar.set_postfix_str("model.keras, SavedModel")
            written = saving.save(model, Path(cfg.paths.model))
            bar.update()
            bar.set_postfix_str("MLflow model")
            model_uri = tracker.log_model(model, _example(load_split(prepared, "val")))
            bar.update()
        tracker.log_artifact(Path(cfg.paths.history), "plots")
    record = {
        "run_id": run_id,
        "model_uri": model_uri,
        "classes": classes,
        "image_size": cfg.data.image_size,
        "dataset": {"name": name, "digest": data_digest, "source": str(source)},  # evaluate scores the model on it
    }
    (Path(cfg.paths.model) / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return {
        **summary,
        "device": described["device"],
        "weights_sha256": digest,
        **written,
        "run_id": run_id,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _example(split: Split) -> np.ndarray:
    return np.asarray(split.images[:1], dtype="float32")


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.train`."""
    stage_main(run)


if __name__ == "__main__":
    main()
