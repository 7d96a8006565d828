"""Which hyperparameters mattered, from a finished search's trials: scikit-learn's permutation importance
on a random forest fitted to (drawn values -> score), and the trials as a parallel-coordinates picture.

Keras Tuner keeps the trials but not what they say (keras-tuner #298, #183); MLflow shows no importance.
A forest on a dozen trials is a rough reading: the table says how many trials it stands on.
"""

from __future__ import annotations

import csv
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from op_classifier.reports.figures import pyplot, save

# Leaderboard columns that are the search's bookkeeping, not drawn values.
BOOKKEEPING = frozenset({"trial_id", "status", "score", "vs_best", "mcnemar_p_vs_best", "picked", "multiply_adds_m"})
MIN_TRIALS = 4  # fewer scored trials than this say nothing about importance
MISSING = -1.0  # a conditional value the trial's architecture did not draw


def drawn_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The hyperparameters the trials drew that vary between them (Hyperband's tuner/* bookkeeping left out)."""
    names = [
        key
        for key in dict.fromkeys(key for row in rows for key in row)
        if key not in BOOKKEEPING and not key.startswith("tuner/")
    ]
    return [name for name in names if len({repr(row.get(name)) for row in rows}) > 1]


def encoded(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[np.ndarray, dict[str, list]]:
    """The trials' values as numbers: numbers as they are, anything else by its rank among the values
    drawn (its labels returned), undrawn conditional values as MISSING."""
    columns, labels = [], {}
    for name in names:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            columns.append([MISSING if v is None else float(v) for v in values])
        else:
            order = sorted({str(v) for v in present})
            labels[name] = order
            columns.append([MISSING if v is None else float(order.index(str(v))) for v in values])
    return np.array(columns, dtype="float64").T, labels


def importance(rows: Sequence[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], str | None]:
    """Each varying hyperparameter's permutation importance (mean and sd of the score's drop in R^2 over
    20 shuffles) on a forest of the scored trials, largest first; or no rows and why not."""
    scored = [row for row in rows if row.get("score") is not None]
    names = drawn_names(scored)
    if len(scored) < MIN_TRIALS or not names:
        return [], f"{len(scored)} scored trial(s), {len(names)} varying hyperparameter(s): too few to tell"
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    x, _ = encoded(scored, names)
    y = np.array([float(row["score"]) for row in scored])
    if np.ptp(y) == 0:
        return [], "every trial scored the same"
    forest = RandomForestRegressor(n_estimators=200, min_samples_leaf=1, random_state=seed).fit(x, y)
    found = permutation_importance(forest, x, y, n_repeats=20, random_state=seed)
    table = [
        {"hyperparameter": name, "importance": round(float(mean), 4), "sd": round(float(sd), 4), "trials": len(scored)}
        for name, mean, sd in zip(names, found.importances_mean, found.importances_std)
    ]
    return sorted(table, key=lambda row: -row["importance"]), None


def write_importance(path: Path, table: Sequence[dict[str, Any]]) -> Path:
    """The importance table as CSV (a DVC plot: bar_horizontal_sorted); a header alone when there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["hyperparameter", "importance", "sd", "trials"])
        writer.writeheader()
        writer.writerows(table)
    return path


def search_trials(rows: Sequence[dict[str, Any]], names: Sequence[str], objective: str, out: Path) -> Path | None:
    """The search's trials in parallel coordinates: one axis a hyperparameter (then the score), one line a
    trial coloured by its score, the picked trial drawn thick; None without a scored trial."""
    scored = [row for row in rows if row.get("score") is not None]
    if not scored:
        return None
    plt = pyplot()
    x, labels = encoded(scored, names)
    scores = np.array([float(row["score"]) for row in scored])
    table = np.column_stack([x, scores]) if len(names) else scores[:, None]
    low, high = table.min(axis=0), table.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    scaled = (table - low) / span
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * (len(names) + 1)), 4.5))
    cmap = plt.get_cmap("viridis")
    shade = (scores - scores.min()) / (np.ptp(scores) or 1.0)
    for row, line, value in zip(scored, scaled, shade):
        ax.plot(range(len(line)), line, color=cmap(value), lw=3 if row.get("picked") else 1.2, alpha=0.9)
    axes = [*names, objective]
    ax.set_xticks(range(len(axes)), axes, rotation=20, ha="right")
    ax.set_yticks([])
    for i, name in enumerate(axes):
        ax.axvline(i, color="grey", lw=0.6)
        ticks = labels.get(name)
        values = sorted({v for v in table[:, i]})
        for value in values if len(values) <= 6 else (values[0], values[-1]):
            text = ticks[int(value)] if ticks and value != MISSING else ("-" if value == MISSING else f"{value:.4g}")
            ax.annotate(text, (i, (value - low[i]) / span[i]), fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_title(f"{len(scored)} trials (thick: the pick), coloured by {objective}")
    return save(fig, plt, out)


def importance_bars(table: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """The hyperparameters' permutation importance as horizontal bars, largest on top; None without a table."""
    if not table:
        return None
    plt = pyplot()
    names = [row["hyperparameter"] for row in table][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    ax.barh(
        names, [row["importance"] for row in table][::-1], xerr=[row["sd"] for row in table][::-1], color="tab:blue"
    )
    ax.set_xlabel("permutation importance (drop in the forest's R^2)")
    ax.set_title(f"What moved the score, over {table[0]['trials']} trials")
    return save(fig, plt, out)


def analyse(rows: Sequence[dict[str, Any]], seed: int, objective: str, paths: Any) -> list[Path]:
    """The trials' importance table (paths.importance) and pictures (in paths.search_plots); the files written."""
    table, why_not = importance(rows, seed)
    if why_not:
        print(f"note: no hyperparameter importance: {why_not}", file=sys.stderr, flush=True)
    plots = Path(paths.search_plots)
    names = drawn_names([row for row in rows if row.get("score") is not None])
    written = [
        write_importance(Path(paths.importance), table),
        search_trials(rows, names, objective, plots / "trials.png"),
        importance_bars(table, plots / "importance.png"),
    ]
    return [path for path in written if path is not None]


def nothing_searched(paths: Any) -> None:
    """tuner=none: an empty importance table, and in paths.search_plots one picture saying so (DVC keeps
    the folder as an output: an empty one warns on every `dvc repro`)."""
    write_importance(Path(paths.importance), [])
    plots = Path(paths.search_plots)
    shutil.rmtree(plots, ignore_errors=True)  # an earlier search's pictures are not this config's
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, "tuner=none: nothing was searched", ha="center", va="center", fontsize=12)
    save(fig, plt, plots / "trials.png")
