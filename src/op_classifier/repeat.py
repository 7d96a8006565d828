"""`op-classifier repeat --seeds N`: the pipeline once per seed, as one experiment with its spread.

Each seed runs prepare, tune, train and evaluate as DVC runs them (each stage its own `op-classifier
<stage>` process, the same overrides plus `seed=S`), in its own folder under paths.repeats, so the
workspace's results are untouched. Their MLflow runs nest under one parent run whose metrics are each
score's mean, standard deviation and 95% t-interval over the seeds, with a picture of the seeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier import config
from op_classifier.errors import ConfigError, OpClassifierError
from op_classifier.tracking import make_tracker

STAGES = ("prepare", "tune", "train", "evaluate")
SCORES = ("val_accuracy", "test_accuracy")
SHARED_PATHS = ("raw", "weights", "export", "repeats")  # every seed reads these; the rest are its own


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95% t-interval of the mean."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    sd = float(np.std(values, ddof=1))
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / np.sqrt(n)) if sd > 0 else (mean, mean)
    return {"mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high)}


def run(overrides: Sequence[str], seeds: int, jobs: int = 1) -> dict[str, Any]:
    """Run the pipeline for `seeds` seeds (`jobs` at once); the per-seed scores and their spread."""
    if seeds < 2:
        raise ConfigError("--seeds must be at least 2: one seed has no spread")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    cfg = config.validate(config.compose(tuple(overrides)))
    started, first = time.perf_counter(), cfg.seed
    folder = Path(cfg.paths.repeats) / time.strftime("%Y%m%d-%H%M%S")
    chosen = [first + i for i in range(seeds)]
    tracker = make_tracker(cfg.tracking)
    name = f"repeat {seeds} seeds" + (f" {' '.join(overrides)}" if overrides else "")
    params = {"seeds": json.dumps(chosen), "overrides": " ".join(overrides) or "none", "folder": str(folder)}
    with tracker.run(name[:250], tags={"stage": "repeat"}, params=params) as parent:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda seed: _one_seed(cfg, overrides, seed, folder, parent), chosen))
        scores = {key: [result[key] for result in results] for key in SCORES}
        summary = {key: spread(values) for key, values in scores.items()}
        tracker.log_metrics({f"{key}_{stat}": value for key, stats in summary.items() for stat, value in stats.items()})
        with tempfile.TemporaryDirectory() as tmp:
            from op_classifier import figures

            tracker.log_artifact(figures.seed_scores(scores, chosen, Path(tmp) / "seed_scores.png"), "figures")
    return {
        "seeds": {str(seed): result for seed, result in zip(chosen, results)},
        **{key: {stat: round(value, 4) for stat, value in stats.items()} for key, stats in summary.items()},
        "folder": str(folder),
        "run_id": parent,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _one_seed(cfg: config.Config, overrides: Sequence[str], seed: int, folder: Path, parent: str | None) -> dict:
    """The four stages of one seed, each its own process, logged to its folder's log.txt."""
    own = folder / f"seed-{seed}"
    own.mkdir(parents=True, exist_ok=True)
    paths = [f"paths.{key}={own / _inside(value)}" for key, value in vars(cfg.paths).items() if key not in SHARED_PATHS]
    nest = [f"tracking.parent_run={parent}"] if parent else []
    log, seconds = own / "log.txt", {}
    for stage in STAGES:
        command = [sys.executable, "-m", "op_classifier.cli", stage, *overrides, f"seed={seed}", *paths, *nest]
        with log.open("a", encoding="utf-8") as out:
            out.write(f"$ op-classifier {stage} ... seed={seed}\n")
            out.flush()
            began = time.perf_counter()
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
            seconds[stage] = round(time.perf_counter() - began, 1)
        if done.returncode != 0:
            last = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["?"]
            raise OpClassifierError(f"seed {seed}: {stage} exited {done.returncode} ({last[0]}); see {log}")
    metrics = json.loads((own / cfg.paths.metrics).read_text(encoding="utf-8"))
    print(f"seed {seed}: " + "  ".join(f"{key} {metrics[key]:.4f}" for key in SCORES), flush=True)
    f1 = {name: scores["f1"] for name, scores in metrics["test_per_class"].items()}
    return {**{key: metrics[key] for key in SCORES}, "test_f1": f1, "stage_seconds": seconds, "folder": str(own)}


def _inside(value: str) -> Path:
    """A configured path as relative: to the project (the working folder) when under it, else its root."""
    path = Path(value)
    if not path.is_absolute():
        return path
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.relative_to(path.anchor)


def table(summary: dict[str, Any]) -> str:
    """The spread as lines a person reads (the seeds' own lines were printed as they finished)."""
    lines = [f"{str(len(summary['seeds'])) + ' seeds':<15} {'mean':<6}  {'sd':<6}  95% interval (t)"]
    for key in SCORES:
        found = summary[key]
        interval = f"[{found['ci_low']:.4f}, {found['ci_high']:.4f}]"
        lines.append(f"{key:<15} {found['mean']:.4f}  {found['sd']:.4f}  {interval}")
    where = f"MLflow run {summary['run_id']} (the seeds' runs nested under it); " if summary["run_id"] else ""
    lines.append(f"{where}each seed's files: {summary['folder']}/seed-<S>")
    return "\n".join(lines)
