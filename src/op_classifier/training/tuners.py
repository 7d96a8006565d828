"""Keras Tuner at its seams: the tuners, each trial's tracking run and line, the search's fingerprint.

Every trial is one nested tracking run (`tracker.trial`, opened in on_trial_begin, closed in
on_trial_end) and one printed line; Keras Tuner's own banners are off (search(verbose=0) sets its
oracle's display quiet, the chief's included) and a trial trains as SearchModel.fit says.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from op_classifier.config import Config, TunerConfig, as_dict
from op_classifier.data.prepared import data_hash
from op_classifier.errors import OpClassifierError
from op_classifier.training import hparams, state, tuner_cluster
from op_classifier.training.backend import set_random_seed
from op_classifier.training.hypermodel import Candidate, SearchModel, candidates, of_config, search_data
from op_classifier.training.leaderboard import SearchData, quiet_trials

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
        if score is not None:  # under the objective's own name: the runs table's val_accuracy column holds it
            self.tracker.log_metrics({oracle.objective.name: score})
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
    with quiet_trials():
        _search(tuner, data)
    return tuner


def _search(tuner: Any, data: SearchData) -> None:
    tuner.search(
        data.train,
        validation_data=data.val,
        shuffle=False,  # the stream shuffles each epoch itself, from the seed
        callbacks=[FatalErrors(tuner.tracker.epoch_callback())],
        verbose=0,  # Keras Tuner's banners off (SearchModel.fit prints the epochs' lines)
    )


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


BUDGET = "max_trials"  # kept beside the fingerprint, not in it: raising it extends a finished search


def resumption(folder: Path, made_by: dict[str, Any], cfg: TunerConfig) -> tuple[bool, str | None, bool]:
    """For a search of `made_by` (its fingerprint): whether a finished one in `folder` stands as it is;
    why one is not carried on (else None); whether it is extended (a raised max_trials)."""
    recorded = state.read(folder) or {}
    before = recorded.get(BUDGET)
    if not state.finished(folder, made_by):  # a killed search resumes, unless asked for fewer trials than it had
        same = recorded.get("id") == made_by["id"] and cfg.kind != "hyperband"
        lowered = same and before is not None and before > made_by[BUDGET]
        return False, _lowered(before, made_by[BUDGET]) if lowered else None, False
    if before == cfg.max_trials or cfg.kind == "hyperband":  # Hyperband's budget is max_epochs, in the fingerprint
        return True, None, False
    why_anew = extend(folder, made_by, before)
    return False, why_anew, why_anew is None


def extend(folder: Path, made_by: dict[str, Any], before: int | None) -> str | None:
    """Reopen the finished search in `folder` (same fingerprint) for a raised max_trials, saying so in one
    line; Keras Tuner then runs only the new trials. A lowered (or unknown) budget: why it starts anew."""
    wanted = made_by[BUDGET]
    if before is None or before > wanted:
        return _lowered(before, wanted)
    state.reopen(folder, made_by)
    print(
        f"note: extending the finished search in {folder} from {before} to {wanted} trials: "
        f"its {before} trials are kept, {wanted - before} new ones run",
        file=sys.stderr,
        flush=True,
    )
    return None


def _lowered(before: int | None, wanted: int) -> str:
    return f"{BUDGET} changed from {before} to {wanted} (a raised one extends a search; a lowered one starts anew)"


def fingerprint(cfg: Config, found: dict[str, Candidate], stage: str) -> dict[str, Any]:
    """What the search's state depends on: this config, data, code (and other architectures' sections);
    max_trials beside it, outside its id."""
    others = {
        name: {"model": as_dict(c.section), "space": {k: as_dict(v) for k, v in c.space.items()}}
        for name, c in found.items()
        if name != cfg.model.name
    }
    extra = {"architectures": others} if others else {}
    params = state.select(as_dict(cfg), hparams.search_params(cfg))
    params.pop(f"tuner.{BUDGET}")
    made_by = state.fingerprint(params, data_hash(Path(cfg.paths.prepared)), stage, cfg.model, **extra)
    return {**made_by, BUDGET: cfg.tuner.max_trials}


def work(cfg: Config, worker: tuner_cluster.Role, classes: list[str], tracker: Any, stage: str) -> dict:
    """A worker of a distributed search: trials from the chief until it says stop; the chief records results.

    Its Keras Tuner folder is its own (paths.tuning/worker-<id>), and its trials nest under the chief's
    tuning run, found by the fingerprint of config, data and code: a worker that differs finds none.
    """
    made_by = fingerprint(cfg, candidates(cfg)[0], stage)["id"]
    timeout = tuner_cluster.wait_s()
    tuner_cluster.wait_for_chief(worker, timeout)
    folder = Path(cfg.paths.tuning) / f"worker-{worker.tuner_id}"
    with tracker.join("state_fingerprint", made_by, timeout):
        data = search_data(cfg, classes)
        search(make(cfg.tuner, of_config(cfg, classes, data), folder, cfg.seed, tracker), data, cfg.seed)
    trials = len(list(folder.glob("trial_*")))
    return {
        "tuner": cfg.tuner.kind,
        "worker": worker.tuner_id,
        "trials_run": trials,
        "did": f"worker {worker.tuner_id} ran {trials} trials",
        "wrote": folder,
    }
