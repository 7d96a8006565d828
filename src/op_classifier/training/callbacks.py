"""The final training's callbacks: the list each phase fits with (callbacks), and its own ones: a stop at the
first non-finite number, a backup a kill or a full disk cannot corrupt, and the whole history across resumes."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import keras

from op_classifier import progress
from op_classifier.config import Config, TrainConfig
from op_classifier.errors import OpClassifierError
from op_classifier.metric_names import is_loss
from op_classifier.training import distributed
from op_classifier.training.distributed import SINGLE, Cluster

HISTORY_FILE = "history.jsonl"  # in paths.checkpoints: every epoch's metrics, across resumes


def callbacks(
    cfg: Config, logged: keras.callbacks.Callback, backup: str, cluster: Cluster = SINGLE
) -> list[keras.callbacks.Callback]:
    """Whole history, checkpoint-and-resume (in paths.checkpoints/`backup`), early stopping with best
    weights, LR decay, and `logged` (the tracker's epoch callback).

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
        logged,
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


class Diverged(OpClassifierError):
    """The training's loss or a metric is no longer a finite number: nothing after it is worth keeping."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Ends the training at the first epoch whose loss or metric is NaN or infinite, before anything of that
    epoch is kept: placed first, it runs before the history, the backup and the early stopping see it."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        bad = {name: float(value) for name, value in (logs or {}).items() if not math.isfinite(float(value))}
        if bad:
            shown = ", ".join(f"{name} {value}" for name, value in list(bad.items())[:3])
            raise Diverged(
                f"epoch {epoch + 1}: {shown}: the training diverged (a learning rate too high?) and stopped; "
                "no model of it is kept"
            )


class DiskFull(OpClassifierError):
    """A file cannot be written for want of space."""


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose files are replaced whole: a kill mid-save leaves the previous backup.

    Keras writes latest.weights.h5 in place, so a kill during the write left a truncated file that
    every later run failed to load. An unreadable backup (from elsewhere) starts fresh, saying so.
    With `writes` off (a multi-process run's other processes) it only restores the chief's backup.
    """

    def __init__(self, backup_dir: str, writes: bool = True) -> None:
        super().__init__(backup_dir, delete_checkpoint=writes)
        self.writes = writes

    def _save_model(self) -> None:
        if not self.writes:
            return
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "partial.weights.h5"  # save_weights insists on the .weights.h5 suffix
        _check_space(folder, _state_bytes(self.model), partial)
        try:
            with distributed.unsharded():  # saving makes Keras variables: the other processes must not wait on them
                self.model.save_weights(str(partial), overwrite=True)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise DiskFull(f"cannot write the checkpoint {partial} ({error.strerror or error})") from None
        meta = folder / "partial.json"
        meta.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}), encoding="utf-8")
        # Weights before metadata: a kill between them re-runs one epoch from later weights, never breaks.
        os.replace(partial, self._weights_path)
        os.replace(meta, self._training_metadata_path)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as error:
            print(
                f"note: the checkpoint in {self.backup_dir} cannot be read ({str(error)[:120]}); starting fresh",
                file=sys.stderr,
                flush=True,
            )
            if self.writes:
                shutil.rmtree(self.backup_dir, ignore_errors=True)
            self.model._initial_epoch = 0


def _state_bytes(model: keras.Model) -> int:
    """What a backup holds: the model's variables and the optimizer's, at 4 bytes a number (float32, the
    widest kept; the optimizer's integer step counters are single numbers)."""
    optimizer = getattr(model, "optimizer", None)
    variables = [*model.weights, *(optimizer.variables if optimizer is not None else [])]
    return sum(4 * math.prod(variable.shape) for variable in variables)


def _check_space(folder: Path, needed: int, what: Path) -> None:
    """Refuse a write the disk cannot take before it starts: HDF5 left alone on a full disk ends the
    process with a segmentation fault after its write fails, and a half-written file."""
    margin = needed // 10 + (1 << 20)  # the file's own structure, and room for what else this epoch writes
    free = shutil.disk_usage(folder).free
    if free < needed + margin:
        raise DiskFull(
            f"cannot write the checkpoint {what}: {free / 2**20:.1f} MiB free on its disk, it needs "
            f"{(needed + margin) / 2**20:.1f} MiB ({os.strerror(errno.ENOSPC)}); the last checkpoint is kept"
        )


class HistoryLog(keras.callbacks.Callback):
    """Per-epoch metrics kept beside the checkpoint (DVC deletes the plots file before a re-run) and
    copied whole to the plots file after every epoch: one row per epoch, across any number of resumes."""

    def __init__(self, kept: Path, out: Path) -> None:
        super().__init__()
        self.kept, self.out = kept, out

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        row.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self.kept.parent.mkdir(parents=True, exist_ok=True)
        with self.kept.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        write_history(self.kept, self.out)


def write_history(kept: Path, out: Path) -> None:
    """The plots CSV from the kept log: the last row of each epoch (a resumed epoch replaces its row)."""
    rows: dict[int, dict[str, float]] = {}
    if kept.is_file():
        for line in kept.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows[int(row["epoch"])] = row
    fields = list(dict.fromkeys(key for row in rows.values() for key in row))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[epoch] for epoch in sorted(rows))
