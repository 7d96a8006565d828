"""Progress bars of the long steps, all alike: on stderr, and only on a terminal (as prepare's)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from tqdm import tqdm


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "img", shown: bool = True) -> Iterator[tqdm]:
    """A bar on stderr that clears itself when done; none when stderr is no terminal (logs, CI).

    While it is drawn, log records (MLflow's warnings) are printed above it, not into it.
    """
    # disable=None: tqdm draws only on a terminal; in a log a bar would be a wall of lines.
    with tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=None if shown else True
    ) as progress:
        if progress.disable:
            yield progress
        else:
            with _logs_above_bars():
                yield progress


def keras_callback(progress: tqdm, batch_size: int) -> Any:
    """A Keras callback that moves the bar by the images of each predicted batch (for model.predict)."""
    import keras

    class _PredictProgress(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
            progress.update(max(0, min(batch_size, progress.total - progress.n)))

    return _PredictProgress()


def epoch_lines(monitor: str) -> Any:
    """A Keras callback printing one short line an epoch: time, loss, accuracy, the monitored metric, lr.

    Keras's own lines carry every metric (20 per-class ones for 4 classes, about 300 characters an
    epoch); all of them are in MLflow and the history file, so the console keeps what one reads at a glance.
    """
    import keras

    shown = list(dict.fromkeys(["loss", "accuracy", "val_accuracy", monitor]))  # under 120 characters

    class _EpochLines(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            values = [f"{name} {float(logs[name]):.4f}" for name in shown if name in logs]
            values.append(f"lr {float(self.model.optimizer.learning_rate):.3g}")  # a schedule's current value
            took = time.perf_counter() - self.started
            print(f"epoch {epoch + 1}/{self.params['epochs']} - {took:.1f}s - {' - '.join(values)}", flush=True)

    return _EpochLines()


class _AboveBars:
    """A stream that clears the bars on stderr while it writes, so a log line never lands inside one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with tqdm.external_write_mode(file=sys.stderr):
            written = self.stream.write(text)
            self.stream.flush()
        return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def _logs_above_bars() -> Iterator[None]:
    loggers = [
        logging.getLogger(),
        *(logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)),
    ]
    swapped = []
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _AboveBars):
                swapped.append((handler, handler.setStream(_AboveBars(handler.stream))))
    try:
        yield
    finally:
        for handler, stream in reversed(swapped):
            handler.setStream(stream)
