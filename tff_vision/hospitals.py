"""What each hospital gets: every arm scored, at each hospital, on that hospital's own patients.

A hospital joins a federation to treat its own patients better. For each arm
of a run this takes the model that hospital would deploy (the global model, or
under FedBN, FedPer, FedRep and Ditto its own one, see
`evaluation.ClientModelsResult`; its local-only model; the pooled model; its
fine-tuned model) scored on the test examples of the classes the hospital
holds, and gives each hospital's accuracy and AUC, the worst hospital and the
spread (max - min). The numbers come from the arms' summary entries
(`EvalResult.summary`), so they are those of each arm's reported round.
"""

from __future__ import annotations

from typing import Any

from tff_vision.evaluation import worst_and_spread

SCORED_ON = "the test examples of the classes the hospital holds"
LOCAL_ONLY_MODEL = "each hospital's own local-only model"


def comparison(summary: dict[str, Any]) -> dict[str, Any] | None:
    """summary.json's "per_hospital" entry, from its arms; None without per-client classes."""
    fed = summary["federated"]
    if "per_client_subset_accuracy" not in fed:
        return None
    arms = {"federated": _arm(fed["model"], fed)}
    local = summary.get("local_only")
    if local:
        own = {
            key: {k: r.get(key, {}).get(k, float("nan")) for k, r in local.items()}
            for key in ("per_client_subset_accuracy", "per_client_subset_auc")
        }
        arms["local_only"] = _arm(LOCAL_ONLY_MODEL, own)
    if "centralized" in summary:
        arms["centralized"] = _arm(summary["centralized"]["model"], summary["centralized"])
    if "personalized" in summary:
        arms["personalized"] = _arm(summary["personalized"]["model"], summary["personalized"])
    return {"scored_on": SCORED_ON, "arms": arms}


def _arm(model: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One arm: each hospital's accuracy and AUC, the worst hospital and the spread of each."""
    result: dict[str, Any] = {"model": model}
    for name, key in (("accuracy", "per_client_subset_accuracy"), ("auc", "per_client_subset_auc")):
        values = {str(k): float(v) for k, v in entry.get(key, {}).items()}
        result[name] = values
        extremes = worst_and_spread(values)
        if extremes is not None:
            worst, spread, hospital = extremes
            result[f"worst_{name}"], result[f"worst_{name}_hospital"] = worst, hospital
            result[f"{name}_spread"] = spread
    return result
