"""Stage `tune`: a Keras Tuner search over the configured space; writes the best values."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from op_classifier.config import (
    ARCHITECTURE,
    Config,
    ConfigError,
    TunerConfig,
    as_dict,
)
from op_classifier.data.prepared import data_hash, load_manifest
from op_classifier.data.stream import split_stream
from op_classifier.errors import OpClassifierError
from op_classifier.metric_names import metric_names
from op_classifier.models import get as architecture
from op_classifier.runner import stage_main
from op_classifier.tracking import RUN_ID_FILE, NullTracker, Tracker, TrackingError, flatten, make_tracker, run_name
from op_classifier.training import features, hparams, state, tuner_cluster
from op_classifier.training.backend import set_random_seed
from op_classifier.training.hypermodel import SearchModel, candidates, head_trials, own_values
from op_classifier.training.leaderboard import SearchData, leaderboard, mark_noise, write_leaderboard

# The params sections this stage declares in dvc.yaml: the tuner's state belongs to their values
# (train's only when the head alone is searched: hparams.search_params).
PARAMS = hparams.HEAD_SEARCH_PARAMS
# Read after the search, for the leaderboard's "within noise" marks: declared to DVC (a change re-runs
# tune, which finds its finished search and marks again) but not in the search's fingerprint.
REPORT_PARAMS = ("tracking.alpha",)
STAGE = "op_classifier.stages.tune"  # its state belongs to the code this module runs


def check_objective(objective: str, classes: list[str]) -> None:
    """Refuse, before any training, an objective the model does not report."""
    known = metric_names(classes)
    if objective not in known:
        raise ConfigError(f"tuner.objective: the model does not report '{objective}' (it reports {', '.join(known)})")


def make_tuner(cfg: TunerConfig, hypermodel: SearchModel, directory: Path, seed: int, tracker: Tracker) -> Any:
    """The configured Keras Tuner; it resumes from `directory` when a search was started there."""
    base = {"hyperband": kt.Hyperband, "random": kt.RandomSearch, "bayesian": kt.BayesianOptimization}[cfg.kind]
    budget = (
        {"max_epochs": cfg.max_epochs, "factor": cfg.factor}
        if cfg.kind == "hyperband"
        else {"max_trials": cfg.max_trials}
    )
    tracked = _with_trial_runs(base, tracker, lines=hypermodel.head is not None)
    return tracked(
        hypermodel=hypermodel,
        objective=kt.Objective(cfg.objective, direction=cfg.direction),
        directory=str(directory.parent),
        project_name=directory.name,
        seed=seed,
        overwrite=False,
        **budget,
    )


def _with_trial_runs(base: type, tracker: Tracker, lines: bool = False) -> type:
    """The tuner class, with one nested tracking run per trial (and, with `lines`, one printed line each)."""

    class Tracked(base):  # type: ignore[misc, valid-type]
        def on_trial_begin(self, trial: Any) -> None:
            self._trial_run = contextlib.ExitStack()
            self._trial_run.enter_context(tracker.trial(trial.trial_id, trial.hyperparameters.values))
            super().on_trial_begin(trial)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            tracker.set_tags({"status": str(trial.status)})
            # A worker's trial gets its score from the chief's oracle, which ended it.
            score = trial.score if trial.score is not None else self.oracle.get_trial(trial.trial_id).score
            if score is not None:
                tracker.log_metrics({"objective": score})
            self._trial_run.close()
            if lines:
                print(trial_line(trial, score, self.oracle), flush=True)

    Tracked.__name__ = base.__name__
    return Tracked


def trial_line(trial: Any, score: float | None, oracle: Any) -> str:
    """One trial in one line: its values, its score and the best so far."""
    values = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.hyperparameters.values.items()
    )
    best = oracle.get_best_trials(1)
    best_score = best[0].score if best else None
    shown = "failed" if score is None else f"{oracle.objective.name} {score:.4f}"
    return f"trial {trial.trial_id}: {values} -> {shown}" + (
        f" (best {best_score:.4f})" if best_score is not None else ""
    )


def search_data(cfg: Config, hypermodel: SearchModel) -> SearchData:
    """The prepared splits; for a search of the head alone, their features through the frozen backbone."""
    prepared = Path(cfg.paths.prepared)
    if hypermodel.head is None:
        val = split_stream(prepared, "val", cfg.tuner.batch_size)
        return SearchData(split_stream(prepared, "train", cfg.tuner.batch_size, seed=cfg.seed), val, val, val.labels)
    (name,) = hypermodel.candidates
    args = {**hparams.model_args(cfg.model), **hypermodel.fixed}
    train, val = features.compute_all(architecture(name).build(**args), prepared, cfg.train.batch_size)
    hypermodel.head = dataclasses.replace(hypermodel.head, dim=train.x.shape[1])
    return SearchData(features.FeatureStream(train, cfg.train.batch_size, cfg.seed), (val.x, val.y), val.x, val.y)


def search(cfg: Config, tracker: Tracker, hypermodel: SearchModel, data: SearchData, folder: Path | None = None) -> Any:
    """Run (or resume) the search in folder (paths.tuning); return the finished tuner."""
    train, val = data.train, data.val
    set_random_seed(cfg.seed)
    tuner = make_tuner(cfg.tuner, hypermodel, folder or Path(cfg.paths.tuning), cfg.seed, tracker)
    # A head's trial trains for the head phase's epochs, with its patience; any other, the tuner's.
    epochs, patience = (
        (cfg.train.epochs, cfg.train.patience) if hypermodel.head else (cfg.tuner.epochs, cfg.tuner.patience)
    )
    stop = keras.callbacks.EarlyStopping(monitor=cfg.tuner.objective, mode=cfg.tuner.direction, patience=patience)
    tuner.search(
        train,
        validation_data=val,
        epochs=epochs,
        shuffle=False,  # the stream shuffles each epoch itself, from the seed
        callbacks=[stop, _FatalStoreErrors(tracker.epoch_callback())],
        verbose=0 if hypermodel.head else 2,  # a head's trial takes seconds: one line each, not its epochs
    )
    return tuner


class _FatalStoreErrors(keras.callbacks.Callback):
    """Keras Tuner retries a failing trial and ends in a traceback; a lost store must end the search."""

    def __init__(self, inner: keras.callbacks.Callback) -> None:
        super().__init__()
        self.inner = inner

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        try:
            self.inner.on_epoch_end(epoch, logs)
        except TrackingError as error:
            raise type("StoreLost", (kt.errors.FatalError, TrackingError), {})(str(error)) from None


def searched_values(values: dict[str, Any], hypermodel: SearchModel) -> dict[str, Any]:
    """The drawn values by their config names (Hyperband adds `tuner/...` bookkeeping; drop it)."""
    if hypermodel.choice is None:
        return {name: value for name, value in values.items() if name in hypermodel.shared}
    name = values[ARCHITECTURE]
    own = own_values(values, name)
    shared = {key: value for key, value in values.items() if key in hypermodel.shared}
    return {ARCHITECTURE: name, **shared, **own}


def _require_a_result(tuner: Any, rows: list[dict[str, Any]]) -> None:
    """No trial with a score means every one failed: say why rather than train on a guess."""
    if rows and rows[0]["score"] is not None:
        return
    messages = [t.message for t in tuner.oracle.trials.values() if getattr(t, "message", None)]
    why = messages[-1].strip().splitlines()[-1] if messages else "no trial ran"
    raise OpClassifierError(f"no tuning trial finished with a score ({why})")


def search_fingerprint(cfg: Config, hypermodel: SearchModel) -> dict[str, Any]:
    """What the search's state depends on: this config, data, code (and other architectures' sections)."""
    others = {
        name: {"model": as_dict(c.section), "space": {k: as_dict(v) for k, v in c.space.items()}}
        for name, c in hypermodel.candidates.items()
        if name != cfg.model.name
    }
    extra = {"architectures": others} if others else {}
    return state.fingerprint(
        state.select(as_dict(cfg), hparams.search_params(cfg)),
        data_hash(Path(cfg.paths.prepared)),
        STAGE,
        cfg.model,
        **extra,
    )


def hypermodel_of(cfg: Config, classes: list[str]) -> SearchModel:
    """The search's hypermodel: every candidate architecture composed and checked before any training."""
    found, shared, choice = candidates(cfg)
    fixed = {"num_classes": len(classes), "image_size": cfg.data.image_size, "seed": cfg.seed}
    return SearchModel(found, shared, choice, fixed, cfg.tuner.learning_rate, classes, head_trials(cfg))


def _settings(cfg: Config) -> dict[str, Any]:
    """What tells one search from another in the runs table: the model, the tuner and its budget."""
    return {
        "model": cfg.model.name,
        "tuner": cfg.tuner.kind,
        "max_trials": cfg.tuner.max_trials,
        "image_size": cfg.data.image_size,
    }


def run(cfg: Config) -> dict:
    """Search, then write best_hparams.yaml and the leaderboard; tuner=none records no values."""
    started = time.perf_counter()
    cluster = tuner_cluster.role()  # a bad or taken address is refused before anything is read or written
    if cluster is not None and cluster.chief:
        tuner_cluster.check_port_free(cluster)
    classes = load_manifest(Path(cfg.paths.prepared), cfg.data.image_size)["classes"]
    check_objective(cfg.tuner.objective, classes)
    hparams.check_space(cfg.tuner.search_space, cfg.model)
    tracker = make_tracker(cfg.tracking)
    if cfg.tuner.kind == "none":
        _no_search(Path(cfg.paths.tuning))
        hparams.write_best(Path(cfg.paths.best_hparams), {}, None, None, made_with=hparams.search_record(cfg))
        write_leaderboard(Path(cfg.paths.leaderboard), [])
        return {"tuner": "none", "best": {}}
    if cluster is not None and not cluster.chief:
        return work(cfg, cluster, classes, tracker)
    folder = Path(cfg.paths.tuning)
    hypermodel = hypermodel_of(cfg, classes)
    made_by = search_fingerprint(cfg, hypermodel)
    if cluster is None and state.finished(folder, made_by):  # workers would wait on a chief that serves no trials
        return _reuse(cfg, hypermodel, folder, started)
    state.claim(folder, made_by, "tuner search", keep=(RUN_ID_FILE,))
    params = {**flatten(state.select(as_dict(cfg), hparams.search_params(cfg))), "state_fingerprint": made_by["id"]}
    tags = {"stage": "tune", "tuner": cfg.tuner.kind, "data_hash": data_hash(Path(cfg.paths.prepared))}
    with tracker.run(
        run_name("tune", _settings(cfg)), resume_file=folder / RUN_ID_FILE, tags=tags, params=params
    ) as run_id:
        data = search_data(cfg, hypermodel)
        outcome = _outcome(cfg, search(cfg, tracker, hypermodel, data), hypermodel, data)
        score = outcome["score"]
        tracker.log_metrics({f"best_{cfg.tuner.objective}": score} if score is not None else {})
    state.mark_complete(folder)
    return _record(cfg, hypermodel, outcome, run_id, started)


def _reuse(cfg: Config, hypermodel: SearchModel, folder: Path, started: float) -> dict:
    """A finished search of this very config, data and code: its result again, without a trial.

    Under `dvc repro`, a change of a key tune declares but this search does not read (the head phase's
    train.* keys beside a search of whole models) re-runs the stage; searching again would give the same.
    """
    print(
        f"note: reusing the finished search in {folder}: same config, data and code (delete it to search again)",
        file=sys.stderr,
        flush=True,
    )
    data = search_data(cfg, hypermodel)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras Tuner's "Reloading Tuner from ..."
        tuner = make_tuner(cfg.tuner, hypermodel, folder, cfg.seed, NullTracker())
    run_file = folder / RUN_ID_FILE
    run_id = run_file.read_text(encoding="utf-8").strip() if run_file.is_file() else None
    return _record(cfg, hypermodel, _outcome(cfg, tuner, hypermodel, data), run_id, started) | {"reused": True}


def _outcome(cfg: Config, tuner: Any, hypermodel: SearchModel, data: SearchData) -> dict[str, Any]:
    """A finished tuner's leaderboard (each trial against the best), its best values and score."""
    rows = leaderboard(tuner)
    _require_a_result(tuner, rows)
    mark_noise(tuner, rows, data, cfg.tracking.alpha)
    best = searched_values(tuner.get_best_hyperparameters(1)[0].values, hypermodel)
    return {"rows": rows, "best": best, "score": rows[0]["score"]}


def _record(cfg: Config, hypermodel: SearchModel, outcome: dict[str, Any], run_id: str | None, started: float) -> dict:
    """Write best_hparams.yaml and the leaderboard; the stage's summary."""
    rows, best, score = outcome["rows"], outcome["best"], outcome["score"]
    drawn = best.get(ARCHITECTURE)
    section = as_dict(hypermodel.candidates[drawn].section) if drawn is not None else None
    hparams.write_best(
        Path(cfg.paths.best_hparams), best, score, run_id, architecture=section, made_with=hparams.search_record(cfg)
    )
    write_leaderboard(Path(cfg.paths.leaderboard), rows)
    return {
        "tuner": cfg.tuner.kind,
        "trials": len(rows),
        "best": best,
        "score": score,
        "within_noise_of_best": [row["trial_id"] for row in rows if row.get("vs_best") == "within noise"],
        "seconds": round(time.perf_counter() - started, 1),
    }


NO_SEARCH = {"id": "tuner=none"}  # the fingerprint of the search folder when nothing is searched


def _no_search(folder: Path) -> None:
    """tuner=none: the search folder dvc.yaml declares holds only a fingerprint saying nothing was searched.

    An earlier search left there would pass for this config's, and an empty folder made DVC warn on
    every `dvc repro` ("'experiments/tuning/search' is empty")."""
    if (state.read(folder) or {}).get("id") != NO_SEARCH["id"]:
        state.claim(folder, NO_SEARCH, "tuner search", why="tuner=none searches nothing (its runs stay in MLflow)")
        state.mark_complete(folder)


def work(cfg: Config, worker: tuner_cluster.Role, classes: list[str], tracker: Tracker) -> dict:
    """A worker of a distributed search: trials from the chief until it says stop; the chief records results.

    Its Keras Tuner folder is its own (paths.tuning/worker-<id>), and its trials nest under the chief's
    tuning run, found by the fingerprint of config, data and code: a worker that differs finds none.
    """
    started = time.perf_counter()
    hypermodel = hypermodel_of(cfg, classes)
    made_by = search_fingerprint(cfg, hypermodel)["id"]
    timeout = tuner_cluster.wait_s()
    tuner_cluster.wait_for_chief(worker, timeout)
    folder = Path(cfg.paths.tuning) / f"worker-{worker.tuner_id}"
    with tracker.join("state_fingerprint", made_by, timeout):
        search(cfg, tracker, hypermodel, search_data(cfg, hypermodel), folder)
    return {
        "tuner": cfg.tuner.kind,
        "worker": worker.tuner_id,
        "trials_run": len(list(folder.glob("trial_*"))),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.tune`."""
    stage_main(run)


if __name__ == "__main__":
    main()
