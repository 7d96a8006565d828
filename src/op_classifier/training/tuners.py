"""Keras Tuner at its seams: the tuners, each trial's tracking run and line, the search's fingerprint.

Every trial is one nested tracking run (`tracker.trial`, opened in on_trial_begin, closed in
on_trial_end) and one printed line; Keras Tuner's own banners are off (search(verbose=0) sets its
oracle's display quiet, the chief's included) and a trial trains as SearchModel.fit says.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from op_classifier.config import Config, TunerConfig, as_dict
from op_classifier.data.prepared import data_hash
from op_classifier.errors import OpClassifierError
from op_classifier.training import hparams, state
from op_classifier.training.backend import set_random_seed
from op_classifier.training.hypermodel import Candidate, SearchModel
from op_classifier.training.leaderboard import SearchData

LINE = 120  # the most characters of a trial's line


class TrialRuns:
    """A tuner's trials, each one nested tracking run (its values, status and score) and one line.

    `tracker` is tracking's Tracker (training imports no tracking: the stage hands it over)."""

    def __init__(self, *args: Any, tracker: Any, **kwargs: Any) -> None:
        self.tracker = tracker
        self._trial_run = contextlib.ExitStack()
        super().__init__(*args, **kwargs)

    def on_trial_begin(self, trial: Any) -> None:
        self._trial_run.enter_context(self.tracker.trial(trial.trial_id, trial.hyperparameters.values))
        super().on_trial_begin(trial)  # type: ignore[misc]

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)  # type: ignore[misc]
        self.tracker.set_tags({"status": str(trial.status)})
        # A worker's trial gets its score from the chief's oracle, which ended it.
        oracle = self.oracle  # type: ignore[attr-defined]
        score = trial.score if trial.score is not None else oracle.get_trial(trial.trial_id).score
        if score is not None:
            self.tracker.log_metrics({"objective": score})
        self._trial_run.close()
        print(
            trial_line(trial.trial_id, self.hypermodel.searched(trial.hyperparameters.values), score, oracle),
            flush=True,
        )  # type: ignore[attr-defined]


class Hyperband(TrialRuns, kt.Hyperband):
    """Keras Tuner's Hyperband, its trials tracked."""


class RandomSearch(TrialRuns, kt.RandomSearch):
    """Keras Tuner's random search, its trials tracked."""


class BayesianOptimization(TrialRuns, kt.BayesianOptimization):
    """Keras Tuner's Bayesian optimization, its trials tracked."""


KINDS = {"hyperband": Hyperband, "random": RandomSearch, "bayesian": BayesianOptimization}


def make(cfg: TunerConfig, hypermodel: SearchModel, directory: Path, seed: int, tracker: Any) -> Any:
    """The configured tuner; it resumes from `directory` when a search was started there."""
    budget = {"max_epochs": cfg.max_epochs, "factor": cfg.factor} if cfg.kind == "hyperband" else {}
    # Keras Tuner 1.4 prints "Reloading Tuner from ..." on resuming, with no option to say it not.
    with contextlib.redirect_stdout(io.StringIO()):
        return KINDS[cfg.kind](
            hypermodel=hypermodel,
            objective=kt.Objective(cfg.objective, direction=cfg.direction),
            directory=str(directory.parent),
            project_name=directory.name,
            seed=seed,
            overwrite=False,
            tracker=tracker,
            **(budget or {"max_trials": cfg.max_trials}),
        )


def search(tuner: Any, data: SearchData, seed: int) -> Any:
    """Run (or resume) the search on `data`; return the finished tuner."""
    set_random_seed(seed)
    tuner.search(
        data.train,
        validation_data=data.val,
        shuffle=False,  # the stream shuffles each epoch itself, from the seed
        callbacks=[FatalErrors(tuner.tracker.epoch_callback())],
        verbose=0,  # Keras Tuner's banners off (SearchModel.fit prints the epochs' lines)
    )
    return tuner


def trial_line(trial_id: str, values: dict[str, Any], score: float | None, oracle: Any) -> str:
    """One trial in one line of at most LINE characters: its values, its score and the best so far."""
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    best = oracle.get_best_trials(1)
    best_score = best[0].score if best else None
    result = "failed" if score is None else f"{oracle.objective.name} {score:.4f}"
    tail = f" -> {result}" + (f" (best {best_score:.4f})" if best_score is not None else "")
    head = f"trial {trial_id}: "
    room = LINE - len(head) - len(tail)
    return head + (shown if len(shown) <= room else shown[: max(room - 3, 0)] + "...") + tail


class Stopped(kt.errors.FatalError, OpClassifierError):
    """A user-facing error in a trial (a lost tracking store): fatal to Keras Tuner, which would retry."""


class FatalErrors(keras.callbacks.Callback):
    """Keras Tuner retries a failing trial and ends in a traceback; a lost store must end the search."""

    def __init__(self, inner: keras.callbacks.Callback) -> None:
        super().__init__()
        self.inner = inner

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        try:
            self.inner.on_epoch_end(epoch, logs)
        except OpClassifierError as error:  # tracking's TrackingError, above all
            stopped = Stopped(str(error))
            stopped.exit_code = error.exit_code
            raise stopped from None


def fingerprint(cfg: Config, found: dict[str, Candidate], stage: str) -> dict[str, Any]:
    """What the search's state depends on: this config, data, code (and other architectures' sections)."""
    others = {
        name: {"model": as_dict(c.section), "space": {k: as_dict(v) for k, v in c.space.items()}}
        for name, c in found.items()
        if name != cfg.model.name
    }
    extra = {"architectures": others} if others else {}
    params = state.select(as_dict(cfg), hparams.search_params(cfg))
    return state.fingerprint(params, data_hash(Path(cfg.paths.prepared)), stage, cfg.model, **extra)
