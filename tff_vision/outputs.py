"""The experiment's own files and lines, besides what its trainers write.

At the start, `write_start`: flags.json (the settings a rerun must match to
resume), partition.csv and partition.png, and the header lines. At the end,
`write_summary`: curves.png, confusion_matrix.png (the federated model of the
round reported), then summary.json, written last, so that its presence means
the run finished, and the closing lines: each result at the round --select
chose, with its 95% bootstrap intervals.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from tff_vision import fileio, hospitals, interrupts, plots
from tff_vision.config import ExperimentConfig
from tff_vision.data import ImageDataset
from tff_vision.partition import Partition

if TYPE_CHECKING:
    from tff_vision.training import FederatedOutcome

Printer = Callable[[str], None]


def write_start(
    config: ExperimentConfig,
    dataset: ImageDataset,
    partition: Partition,
    out: pathlib.Path,
    machine: str,
    printer: Printer,
) -> None:
    """Writes flags.json and the partition's counts; prints data, model, `machine` and counts."""
    fileio.write_json_atomic(out / "flags.json", config.result_fields())
    counts = partition.to_frame(dataset.train.labels, list(dataset.class_names))
    fileio.write_csv_atomic(counts, out / "partition.csv")
    plots.plot_class_counts(counts, out / "partition.png", title=f"{config.partition} partition")
    printer(
        f"{dataset.name} {dataset.size}px ({dataset.source}): {len(dataset.train)} train / "
        f"{len(dataset.test)} test, {dataset.num_classes} classes; {config.model} "
        f"(norm={config.norm}); {machine}"
    )
    printer(f"client x class counts ({config.partition}):\n{counts.to_string()}")


def format_result(result: dict[str, Any]) -> str:
    """A result's test accuracy and AUC, with their 95% intervals where known.

    E.g. ``test_acc 0.5625 [0.515, 0.610]  test_auc 0.7410 [0.712, 0.770]``.
    """
    ci = result.get("ci95") or {}
    parts = []
    for key, short in (("test_accuracy", "test_acc"), ("test_auc", "test_auc")):
        text = f"{short} {_number(result.get(key), 4)}"
        if key in ci:
            text += f" [{_number(ci[key][0], 3)}, {_number(ci[key][1], 3)}]"
        parts.append(text)
    return "  ".join(parts)


def selection_text(result: dict[str, Any]) -> str:
    """Which round a result is from: "selected round 14 on val AUC" or "final round"."""
    if result.get("select", "final") == "final" or "selected_round" not in result:
        return "final round"
    return f"selected round {result['selected_round']} on val AUC"


def _number(value: float | None, digits: int) -> str:
    """`value` with `digits` decimals; "nan" for an undefined metric (None in JSON)."""
    return "nan" if value is None else f"{value:.{digits}f}"


# summary.json's "model" entry of each arm: which model its numbers come from.
GLOBAL_MODEL = "the global model (the server's after each round)"
POOLED_MODEL = "one model trained on all clients' data pooled"


def write_summary(
    config: ExperimentConfig,
    dataset: ImageDataset,
    partition: Partition,
    out: pathlib.Path,
    *,
    fed: FederatedOutcome,
    algorithm: dict[str, Any],
    privacy: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]],
    personalized: dict[str, Any] | None = None,
    device: str,
    started: float,
    printer: Printer,
) -> dict[str, Any]:
    """Plots the results, writes summary.json and prints the closing lines; returns the summary.

    `started` is the run's `time.monotonic()` start. A Ctrl-C swallowed on the
    way (e.g. by a plot) still raises here, so an interrupted run has no summary.
    """
    summary: dict[str, Any] = {"federated": {"model": GLOBAL_MODEL, **fed.summary}}
    summary["federated"]["rounds"] = fed.rounds
    summary["algorithm"] = algorithm
    if privacy is not None:
        summary["privacy"] = privacy
    if "local" in config.baselines:
        summary["local_only"] = {
            name.removeprefix("local_"): {
                "model": f"client {name.removeprefix('local_')} alone",
                **r,
            }
            for name, r in baselines.items()
            if name != "centralized"
        }
    if "centralized" in config.baselines:
        summary["centralized"] = {"model": POOLED_MODEL, **baselines["centralized"]}
    if fed.communication is not None:
        summary["communication"] = fed.communication
    if personalized is not None:
        summary["personalized"] = personalized
    per_hospital = hospitals.comparison(summary)
    if per_hospital is not None:
        summary["per_hospital"] = per_hospital
    _plot_results(config, dataset, out, fed, baselines)
    if per_hospital is not None:
        plots.plot_per_hospital(per_hospital["arms"], out / "per_hospital.png", _title(config))
    summary["wall_seconds"] = time.monotonic() - started
    summary["resumed_from_round"] = fed.resumed_from
    summary["dataset"] = {
        "name": dataset.name,
        "size": dataset.size,
        "source": dataset.source,
        "class_names": list(dataset.class_names),
        "train_examples": len(dataset.train),
        "test_examples": len(dataset.test),
    }
    summary["partition"] = {
        "spec": partition.spec,
        "client_classes": {str(i): c for i, c in enumerate(partition.client_classes)},
        "client_examples": {str(i): int(n) for i, n in enumerate(partition.sizes)},
    }
    summary["confusion_matrix"] = fed.selected_eval.confusion.tolist()
    summary["device"] = device
    interrupts.raise_if_interrupted()
    fileio.write_json_atomic(out / "summary.json", summary)
    printer(final_report(summary))
    return summary


def _plot_results(
    config: ExperimentConfig,
    dataset: ImageDataset,
    out: pathlib.Path,
    fed: FederatedOutcome,
    baselines: dict[str, dict[str, Any]],
) -> None:
    """curves.png (federated metrics per round, baselines as lines) and confusion_matrix.png."""
    metrics = pd.read_csv(out / "metrics.csv")
    lines = {
        ("centralized" if name == "centralized" else name.replace("_", " ")): {
            "accuracy": r["test_accuracy"],
            "loss": r.get("test_loss"),
        }
        for name, r in baselines.items()
    }
    plots.plot_curves(
        metrics,
        out / "curves.png",
        baselines=lines,
        title=_title(config),
        selected_round=fed.summary.get("selected_round"),
    )
    if "bytes_up_cumulative" in metrics.columns:
        plots.plot_accuracy_vs_bytes(metrics, out / "communication.png", _title(config))
    plots.plot_confusion_matrix(
        fed.selected_eval.confusion,
        dataset.class_names,
        out / "confusion_matrix.png",
        title=f"{config.algorithm}, round {fed.summary.get('selected_round', fed.rounds)}",
    )


def _title(config: ExperimentConfig) -> str:
    return (
        f"{config.dataset} {config.size}px, {config.model}, {config.partition} "
        f"{config.exclude}, {config.num_clients} clients".replace("  ", " ")
    )


def final_report(summary: dict[str, Any]) -> str:
    """The closing lines: every result at its reported round, the privacy guarantee, the wall time.

    E.g. ``federated (20 rounds, selected round 14 on val AUC): test_acc 0.5625
    [0.515, 0.610]  test_auc 0.7410 [0.712, 0.770]``.
    """
    fed = summary["federated"]
    lines = [f"federated ({fed['rounds']} rounds, {selection_text(fed)}): {format_result(fed)}"]
    if "per_client" in fed:  # Each client's own model (FedBN): the mean, then each one.
        lines[0] += f"  ({fed['metrics_are']})"
        for cid, r in fed["per_client"].items():
            lines.append(
                f"  client {cid}'s own model: {format_result(r)}  on its classes: "
                f"acc {_number(r['subset_accuracy'], 4)} auc {_number(r['subset_auc'], 4)}"
            )
    for cid, r in summary.get("local_only", {}).items():
        lines.append(f"local-only client {cid} ({selection_text(r)}): {format_result(r)}")
    if "centralized" in summary:
        c = summary["centralized"]
        lines.append(f"centralized ({selection_text(c)}): {format_result(c)}")
    if "personalized" in summary:
        p = summary["personalized"]
        lines.append(
            f"fine-tuned ({p['epochs']} epoch(s) per client, mean over clients): {format_result(p)}"
        )
    if "privacy" in summary:
        p = summary["privacy"]
        lines.append(
            f"privacy: epsilon {p['epsilon']:.4g} at delta {p['delta']:.3g} after "
            f"{p['rounds']} rounds (noise multiplier {p['noise_multiplier']}, "
            f"sampling rate {p['sampling_rate']:.4g}, {p['accountant']})"
            + (f"; warning: {p['warning']}" if p.get("warning") else "")
        )
    for arm, entry in summary.get("per_hospital", {}).get("arms", {}).items():
        if "worst_accuracy" in entry:
            hospital = entry["worst_accuracy_hospital"]
            lines.append(
                f"{arm.replace('_', '-')} at the worst hospital ({hospital}) on its own classes: "
                f"acc {_number(entry['worst_accuracy'], 4)}, "
                f"spread {_number(entry['accuracy_spread'], 4)}"
            )
    lines.append(f"wall time {summary['wall_seconds']:.0f} s")
    return "\n".join(lines)
