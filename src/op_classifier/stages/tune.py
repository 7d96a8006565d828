"""Stage `tune`: a Keras Tuner search over the configured space; writes the best values.

The story: load the search's data (the splits, or a frozen backbone's features), build the hypermodel
(training/hypermodel.py: what a trial builds and how it trains), search (training/tuners.py: the tuner,
each trial's nested tracking run and its one line), record (best_hparams.yaml and the leaderboard).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from op_classifier.config import ARCHITECTURE, Config, ConfigError, as_dict
from op_classifier.data.prepared import data_hash, load_manifest
from op_classifier.metric_names import metric_names
from op_classifier.runner import stage_main, written
from op_classifier.tracking import RUN_ID_FILE, NullTracker, Tracker, flatten, make_tracker, run_name
from op_classifier.training import hparams, leaderboard, state, tuner_cluster, tuners
from op_classifier.training.hypermodel import SearchModel, candidates, of_config, search_data

# The params sections this stage declares in dvc.yaml: the tuner's state belongs to their values
# (train's only when the head alone is searched: hparams.search_params).
PARAMS = hparams.HEAD_SEARCH_PARAMS
# Read after the search, for the leaderboard's "within noise" marks: declared to DVC (a change re-runs
# tune, which finds its finished search and marks again) but not in the search's fingerprint.
REPORT_PARAMS = ("tracking.alpha",)
STAGE = "op_classifier.stages.tune"  # its state belongs to the code this module runs
NO_SEARCH = {"id": "tuner=none"}  # the fingerprint of the search folder when nothing is searched


def run(cfg: Config) -> dict:
    """Search, then write best_hparams.yaml and the leaderboard; tuner=none records no values."""
    started = time.perf_counter()
    cluster = tuner_cluster.role()  # a bad or taken address is refused before anything is read or written
    if cluster is not None and cluster.chief:
        tuner_cluster.check_port_free(cluster)
    classes = load_manifest(Path(cfg.paths.prepared), cfg.data.image_size)["classes"]
    if cfg.tuner.objective not in metric_names(classes):  # refused before any training
        known = ", ".join(metric_names(classes))
        raise ConfigError(f"tuner.objective: the model does not report '{cfg.tuner.objective}' (it reports {known})")
    hparams.check_space(cfg.tuner.search_space, cfg.model)
    tracker = make_tracker(cfg.tracking)
    if cfg.tuner.kind == "none":
        return _no_search(cfg, started)
    if cluster is not None and not cluster.chief:
        return work(cfg, cluster, classes, tracker, started)
    folder = Path(cfg.paths.tuning)
    made_by = tuners.fingerprint(cfg, candidates(cfg)[0], STAGE)
    if cluster is None and state.finished(folder, made_by):  # workers would wait on a chief that serves no trials
        return _reuse(cfg, classes, folder, started)
    state.claim(folder, made_by, "tuner search", keep=(RUN_ID_FILE,))
    params = {**flatten(state.select(as_dict(cfg), hparams.search_params(cfg))), "state_fingerprint": made_by["id"]}
    tags = {"stage": "tune", "tuner": cfg.tuner.kind, "data_hash": data_hash(Path(cfg.paths.prepared))}
    shown = {"model": cfg.model.name, "tuner": cfg.tuner.kind, "max_trials": cfg.tuner.max_trials}
    name = run_name("tune", shown | {"image_size": cfg.data.image_size})  # one search from another in the runs table
    with tracker.run(name, resume_file=folder / RUN_ID_FILE, tags=tags, params=params) as run_id:
        data = search_data(cfg, classes)
        hypermodel = of_config(cfg, classes, data)
        tuner = tuners.search(tuners.make(cfg.tuner, hypermodel, folder, cfg.seed, tracker), data, cfg.seed)
        outcome = leaderboard.outcome(tuner, data, cfg.tracking.alpha)
        tracker.log_metrics({f"best_{cfg.tuner.objective}": outcome["score"]})  # a score: outcome refuses none
    state.mark_complete(folder)
    return _record(cfg, hypermodel, outcome, run_id, started)


def _reuse(cfg: Config, classes: list[str], folder: Path, started: float) -> dict:
    """A finished search of this very config, data and code: its result again, without a trial.

    Under `dvc repro`, a change of a key tune declares but this search does not read (the head phase's
    train.* keys beside a search of whole models) re-runs the stage; searching again would give the same.
    """
    said = f"note: reusing the finished search in {folder}: same config, data and code (delete it to search again)"
    print(said, file=sys.stderr, flush=True)
    data = search_data(cfg, classes)
    hypermodel = of_config(cfg, classes, data)
    tuner = tuners.make(cfg.tuner, hypermodel, folder, cfg.seed, NullTracker())
    run_file = folder / RUN_ID_FILE
    run_id = run_file.read_text(encoding="utf-8").strip() if run_file.is_file() else None
    outcome = leaderboard.outcome(tuner, data, cfg.tracking.alpha)
    return _record(cfg, hypermodel, outcome, run_id, started) | {"reused": True}


def _record(cfg: Config, hypermodel: SearchModel, outcome: dict, run_id: str | None, started: float) -> dict:
    """Write best_hparams.yaml and the leaderboard; the stage's summary."""
    rows, best, score = outcome["rows"], outcome["best"], outcome["score"]
    drawn = best.get(ARCHITECTURE)
    section = as_dict(hypermodel.candidates[drawn].section) if drawn is not None else None
    path = Path(cfg.paths.best_hparams)
    hparams.write_best(path, best, score, run_id, architecture=section, made_with=hparams.search_record(cfg))
    leaderboard.write_leaderboard(Path(cfg.paths.leaderboard), rows)
    return {
        "tuner": cfg.tuner.kind,
        "trials": len(rows),
        "best": best,
        "score": score,
        "within_noise_of_best": [row["trial_id"] for row in rows if row.get("vs_best") == "within noise"],
        "did": f"{len(rows)} trials ({cfg.tuner.kind}), best {cfg.tuner.objective} {score:.4f}",
        "wrote": written(path, cfg.paths.leaderboard),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _no_search(cfg: Config, started: float) -> dict:
    """tuner=none: no values; the search folder dvc.yaml declares holds only a fingerprint saying so.

    An earlier search left there would pass for this config's, and an empty folder made DVC warn on
    every `dvc repro` ("'experiments/tuning/search' is empty")."""
    folder = Path(cfg.paths.tuning)
    if (state.read(folder) or {}).get("id") != NO_SEARCH["id"]:
        state.claim(folder, NO_SEARCH, "tuner search", why="tuner=none searches nothing (its runs stay in MLflow)")
        state.mark_complete(folder)
    path = Path(cfg.paths.best_hparams)
    hparams.write_best(path, {}, None, None, made_with=hparams.search_record(cfg))
    leaderboard.write_leaderboard(Path(cfg.paths.leaderboard), [])
    took = round(time.perf_counter() - started, 1)
    return {"tuner": "none", "best": {}, "did": "no search (tuner=none)", "wrote": path, "seconds": took}


def work(cfg: Config, worker: tuner_cluster.Role, classes: list[str], tracker: Tracker, started: float) -> dict:
    """A worker of a distributed search: trials from the chief until it says stop; the chief records results.

    Its Keras Tuner folder is its own (paths.tuning/worker-<id>), and its trials nest under the chief's
    tuning run, found by the fingerprint of config, data and code: a worker that differs finds none.
    """
    made_by = tuners.fingerprint(cfg, candidates(cfg)[0], STAGE)["id"]
    timeout = tuner_cluster.wait_s()
    tuner_cluster.wait_for_chief(worker, timeout)
    folder = Path(cfg.paths.tuning) / f"worker-{worker.tuner_id}"
    with tracker.join("state_fingerprint", made_by, timeout):
        data = search_data(cfg, classes)
        tuners.search(tuners.make(cfg.tuner, of_config(cfg, classes, data), folder, cfg.seed, tracker), data, cfg.seed)
    trials = len(list(folder.glob("trial_*")))
    return {
        "tuner": cfg.tuner.kind,
        "worker": worker.tuner_id,
        "trials_run": trials,
        "did": f"worker {worker.tuner_id} ran {trials} trials",
        "wrote": folder,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.tune`."""
    stage_main(run)


if __name__ == "__main__":
    main()
