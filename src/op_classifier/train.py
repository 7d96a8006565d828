"""Stage `train`: the final model from config plus the tuned values; saves model.keras and a SavedModel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, ContextManager

import keras
import numpy as np

from op_classifier import hparams
from op_classifier.cli import stage_main
from op_classifier.config import Config, ConfigError, TrainConfig, as_dict
from op_classifier.data import RUN_FILE, Split, load_manifest, load_split
from op_classifier.errors import OpClassifierError
from op_classifier.metric_names import is_loss, metric_names
from op_classifier.model import build_model, compile_model
from op_classifier.tracking import Tracker, flatten, git_commit



def pick_device(cfg: TrainConfig) -> tuple[ContextManager, str, bool]:
    """(scope to build the model in, device description, mixed precision on?) from train.device."""
    gpus = _gpus()
    if cfg.device == "gpu" and not gpus:
        raise OpClassifierError("train.device=gpu but no GPU is visible (check the CUDA install: make GPU=1)")
    if cfg.device == "cpu":
        gpus = _hide_gpus()
    mixed = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if len(gpus) > 1 and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope(), f"{len(gpus)} GPUs (MirroredStrategy)", mixed
    return contextlib.nullcontext(), ("GPU" if gpus else "CPU"), mixed


def _gpus() -> list[Any]:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    if keras.backend.backend() == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    return []


def _hide_gpus() -> list[Any]:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    return []


def callbacks(cfg: Config, tracker: Tracker, resuming: bool) -> list[keras.callbacks.Callback]:
    """Checkpoint-and-resume, early stopping with best weights, LR decay, the history CSV, tracking."""
    history = Path(cfg.paths.history)
    history.parent.mkdir(parents=True, exist_ok=True)
    # Keras cannot tell the direction of our custom `accuracy`; losses fall, every other metric rises.
    mode = "min" if is_loss(cfg.train.monitor) else "max"
    return [
        keras.callbacks.BackupAndRestore(str(Path(cfg.paths.checkpoints) / "backup")),
        keras.callbacks.EarlyStopping(monitor=cfg.train.monitor, patience=cfg.train.patience,
                                      restore_best_weights=True, mode=mode),
        # A tuned learning rate that is right for 8 epochs can be too high for 60: decay on plateaus.
        keras.callbacks.ReduceLROnPlateau(monitor=cfg.train.monitor, factor=cfg.train.lr_factor,
                                          patience=cfg.train.lr_patience, min_lr=1e-5, mode=mode),
        keras.callbacks.CSVLogger(str(history), append=resuming),
        tracker.epoch_callback(),
    ]


def export(model: keras.Model, out: Path) -> dict[str, str]:
    """model.keras, and the TensorFlow Serving SavedModel at saved_model/1/ (TensorFlow backend)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    written = {"keras": str(out / "model.keras")}
    if keras.backend.backend() == "tensorflow":
        written["saved_model"] = export_saved_model(model, out / "saved_model" / "1")
    else:
        print(f"note: no SavedModel under the {keras.backend.backend()} backend; export needs TensorFlow")
    return written


def export_saved_model(model: keras.Model, path: Path) -> str:
    """TensorFlow Serving's layout: signature serving_default, (batch, S, S, 3) float32 pixels in."""
    # model.export() traced the random augmentation layers in training mode (outputs differed from
    # predict() by up to 0.57), so the endpoint calls the model with training=False explicitly.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda images: model(images, training=False),
                         input_signature=[keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")])
    archive.write_out(str(path), verbose=False)
    return str(path)


def data_hash(prepared: Path) -> str:
    """Fingerprint of the prepared data (its manifest names every file and split)."""
    return hashlib.sha256((prepared / "manifest.json").read_bytes()).hexdigest()[:16]


def fit(cfg: Config, tracker: Tracker, classes: list[str], tuned: dict[str, Any]) -> tuple[keras.Model, dict]:
    """Build the model from config plus tuned values and train it (resuming a killed run)."""
    if cfg.train.monitor not in metric_names(classes):
        raise ConfigError(f"train.monitor: the model does not report '{cfg.train.monitor}'")
    prepared = Path(cfg.paths.prepared)
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    scope, device, mixed = pick_device(cfg.train)
    args, learning_rate = hparams.final_args(cfg.model, cfg.train, tuned)
    keras.utils.set_random_seed(cfg.seed)
    with scope:
        model = build_model(len(classes), cfg.data.image_size, seed=cfg.seed, **args)
        compile_model(model, learning_rate, classes)
    resuming = (Path(cfg.paths.checkpoints) / "backup").exists()
    tracker.log_params({"device": device, "mixed_precision": mixed, "learning_rate_used": learning_rate,
                        "classes": json.dumps(classes),
                        **{f"tuned.{k}": v for k, v in tuned.items()}})
    history = model.fit(np.asarray(train.images), train.labels, validation_data=(np.asarray(val.images), val.labels),
                        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                        callbacks=callbacks(cfg, tracker, resuming), verbose=2)
    return model, {"epochs_run": len(history.epoch), "device": device, "resumed": resuming}


def run(cfg: Config) -> dict:
    """Train, export, log the model; record the run for evaluate."""
    started = time.perf_counter()
    prepared = Path(cfg.paths.prepared)
    classes = load_manifest(prepared)["classes"]
    best = hparams.read_best(Path(cfg.paths.best_hparams))
    tracker = Tracker(cfg.tracking)
    tags = {"stage": "train", "git_commit": git_commit(), "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
            "data_hash": data_hash(prepared), "tuning_run_id": best.get("tuning_run_id")}
    resume = Path(cfg.paths.checkpoints) / "mlflow_run_id"
    with tracker.run("train", resume_file=resume, tags=tags) as run_id:
        tracker.log_params(flatten(as_dict(cfg)))
        model, summary = fit(cfg, tracker, classes, best.get("values") or {})
        written = export(model, Path(cfg.paths.model))
        example = _example(load_split(prepared, "val"))
        model_uri = tracker.log_model(model, example)
        tracker.log_artifact(Path(cfg.paths.history), "plots")
    record = {"run_id": run_id, "model_uri": model_uri, "classes": classes, "image_size": cfg.data.image_size}
    (Path(cfg.paths.model) / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return {**summary, **written, "run_id": run_id, "seconds": round(time.perf_counter() - started, 1)}


def _example(split: Split) -> np.ndarray:
    return np.asarray(split.images[:1], dtype="float32")


def main() -> None:
    """DVC entry point: `python -m op_classifier.train`."""
    stage_main(run)


if __name__ == "__main__":
    main()
