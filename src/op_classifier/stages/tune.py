"""Stage `tune`: a Keras Tuner search over the configured space; writes the best values.

The story: load the search's data (the splits, or a frozen backbone's features), build the hypermodel
(training/hypermodel.py: what a trial builds and how it trains), search (training/tuners.py: the tuner,
each trial's nested tracking run and its one line), record (best_hparams.yaml and the leaderboard).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from op_classifier.config import ARCHITECTURE, Config, ConfigError, as_dict
from op_classifier.data.prepared import data_hash, load_manifest
from op_classifier.metric_names import metric_names
from op_classifier.reports import search
from op_classifier.runner import stage_main, written
from op_classifier.tracking import RUN_ID_FILE, NullTracker, flatten, make_tracker, run_name
from op_classifier.training import hparams, leaderboard, state, tuner_cluster, tuners
from op_classifier.training.hypermodel import SearchModel, candidates, of_config, search_data

# The params sections this stage declares in dvc.yaml: the tuner's state belongs to their values
# (train's only when the head, or the fine-tuning, is searched: hparams.search_params).
PARAMS = hparams.FINE_TUNE_SEARCH_PARAMS
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
        return tuners.work(cfg, cluster, classes, tracker, STAGE) | {"seconds": round(time.perf_counter() - started, 1)}
    folder = Path(cfg.paths.tuning)
    made_by = tuners.fingerprint(cfg, candidates(cfg)[0], STAGE)
    # Workers would wait on a chief that serves no trials: only a lone search is reused or extended.
    reuse, why_anew, extending = tuners.resumption(folder, made_by, cfg.tuner) if cluster is None else (0, None, 0)
    if reuse:
        return _reuse(cfg, classes, folder, started)
    extended = _run_id(folder) if extending else None  # the new trials go on under the same tune run
    state.claim(folder, made_by, "tuner search", keep=(RUN_ID_FILE,), why=why_anew)
    params = {**flatten(state.select(as_dict(cfg), hparams.search_params(cfg))), "state_fingerprint": made_by["id"]}
    params.pop(f"tuner.{tuners.BUDGET}")  # a tag: an extended search's run goes on with a raised one
    shown = {"model": cfg.model.name, "tuner": cfg.tuner.kind, "max_trials": cfg.tuner.max_trials}
    name = run_name("tune", shown | {"image_size": cfg.data.image_size})  # one search from another in the runs table
    tags = {"stage": "tune", "tuner": cfg.tuner.kind, "data_hash": data_hash(Path(cfg.paths.prepared))}
    tags |= {tuners.BUDGET: cfg.tuner.max_trials, **({"mlflow.runName": name} if extended else {})}
    with tracker.run(name, resume_file=folder / RUN_ID_FILE, tags=tags, params=params, run_id=extended) as run_id:
        data = search_data(cfg, classes)
        hypermodel = of_config(cfg, classes, data)
        tuner = tuners.search(tuners.make(cfg.tuner, hypermodel, folder, cfg.seed, tracker), data, cfg.seed)
        outcome = leaderboard.outcome(tuner, data, cfg.tracking.alpha, _cost(hypermodel))
        tracker.log_metrics({f"best_{cfg.tuner.objective}": outcome["score"]})  # a score: outcome refuses none
        tracker.set_tags({"pick": outcome["why"]})
        trials = leaderboard.write_leaderboard(Path(cfg.paths.leaderboard), outcome["rows"])
        for path in (trials, *search.analyse(outcome["rows"], cfg.seed, cfg.tuner.objective, cfg.paths)):
            tracker.log_artifact(path, "analysis")  # the trials table, their importance and pictures
    state.mark_complete(folder)
    return _record(cfg, hypermodel, outcome, run_id, started)


def _run_id(folder: Path) -> str | None:
    """The tracking run of the search in `folder`, if one was logged."""
    run_file = folder / RUN_ID_FILE
    return run_file.read_text(encoding="utf-8").strip() or None if run_file.is_file() else None


def _cost(hypermodel: SearchModel) -> Callable[[dict], int] | None:
    """A trial's multiply-adds, where trials differ in model (a search of the head alone trains one)."""
    return None if hypermodel.head_search is not None else hypermodel.multiply_adds


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
    outcome = leaderboard.outcome(tuner, data, cfg.tracking.alpha, _cost(hypermodel))
    search.analyse(outcome["rows"], cfg.seed, cfg.tuner.objective, cfg.paths)
    return _record(cfg, hypermodel, outcome, _run_id(folder), started) | {"reused": True}


def _record(cfg: Config, hypermodel: SearchModel, outcome: dict, run_id: str | None, started: float) -> dict:
    """Write best_hparams.yaml and the leaderboard; the stage's summary."""
    rows, best, score = outcome["rows"], dict(outcome["best"]), outcome["score"]
    drawn = best.get(ARCHITECTURE)
    section = as_dict(hypermodel.candidates[drawn].section) if drawn is not None else None
    path, made_with = Path(cfg.paths.best_hparams), hparams.search_record(cfg)
    hparams.write_best(path, best, score, run_id, architecture=section, made_with=made_with, why=outcome["why"])
    leaderboard.write_leaderboard(Path(cfg.paths.leaderboard), rows)
    return {
        "tuner": cfg.tuner.kind,
        "trials": len(rows),
        "best": best,
        "score": score,
        "within_noise_of_best": [row["trial_id"] for row in rows if row.get("vs_best") == "within noise"],
        "pick": outcome["why"],
        "did": f"{len(rows)} trials ({cfg.tuner.kind}), picked {cfg.tuner.objective} {score:.4f}",
        "wrote": written(path, cfg.paths.leaderboard, cfg.paths.search_plots),  # importance.csv beside them
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
    search.nothing_searched(cfg.paths)
    took = round(time.perf_counter() - started, 1)
    return {"tuner": "none", "best": {}, "did": "no search (tuner=none)", "wrote": path, "seconds": took}


def main() -> None:
    """DVC entry point: `python -m op_classifier.stages.tune`."""
    stage_main(run)


if __name__ == "__main__":
    main()
