"""The model registry's champion: which registered version the `champion` alias points to, and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from op_classifier.config import CHAMPION

DATA_HASH_TAG = "data_hash"  # on model versions: the prepared data their score was measured on


def champion_decision(
    score: float, target: float, data_hash: str | None, metric: str, current: Mapping[str, str] | None
) -> dict[str, Any]:
    """Whether a new model scoring `score` takes the alias from the current champion (its version tags)."""
    if score < target:
        return {"champion": False, "champion_reason": f"{metric} {score:.4f} is below the target {target}"}
    if current is None:
        return {"champion": True, "champion_reason": "no champion yet"}
    theirs = current.get(metric)
    if not data_hash or current.get(DATA_HASH_TAG) != data_hash or theirs is None:
        return {
            "champion": False,
            "champion_reason": (
                f"the champion was scored on other data (data hash {current.get(DATA_HASH_TAG)}, this model "
                f"{data_hash}): scores on different splits are not comparable; move the alias by hand if wanted"
            ),
        }
    if score > float(theirs):
        return {
            "champion": True,
            "champion_reason": f"{metric} {score:.4f} beats the champion's {float(theirs):.4f}",
            "previous_champion_score": float(theirs),
        }
    return {
        "champion": False,
        "champion_reason": f"{metric} {score:.4f} does not beat the champion's {float(theirs):.4f}",
        "previous_champion_score": float(theirs),
    }


def champion_tags(client: Any, name: str) -> dict[str, str] | None:
    """The current champion version's tags (its score and data hash), or None."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version_by_alias(name, CHAMPION).tags)
    except MlflowException:
        return None


def significance_decision(
    decision: Mapping[str, Any], result: Mapping[str, Any] | None, why_not: str = ""
) -> dict[str, Any]:
    """Under tracking.promotion=significant: a model that beats the champion takes the alias only when
    the paired test on the same images says the gain is more than noise (McNemar p < alpha)."""
    if not decision["champion"] or "previous_champion_score" not in decision:
        return {**decision, "promotion": {"rule": "significant", "reason": decision["champion_reason"]}}
    if result is None:
        reason = f"{decision['champion_reason']}, but no paired test could be made ({why_not}): the champion stays"
        return {
            **decision,
            "champion": False,
            "champion_reason": reason,
            "promotion": {"rule": "significant", "reason": reason},
        }
    gain, (low, high), p_value = result["accuracy"]["difference"], result["accuracy_interval"], result["mcnemar_p"]
    significant = p_value < result["alpha"] and gain > 0
    said = (
        f"gain {gain:+.4f} on {result['split']} (95% interval [{low:+.4f}, {high:+.4f}], McNemar p = {p_value:.3g}"
        f" {'<' if significant else '>='} alpha {result['alpha']})"
    )
    reason = f"{decision['champion_reason']}: {said}" + ("" if significant else ", within noise: the champion stays")
    promotion = {
        "rule": "significant",
        "reason": reason,
        "difference": gain,
        "interval": [low, high],
        "mcnemar_p": p_value,
    }
    return {**decision, "champion": significant, "champion_reason": reason, "promotion": promotion}
