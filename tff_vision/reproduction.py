"""MedMNIST v2's centralized ResNet-18 (28) protocol, to print its published rows beside ours.

Yang et al. (MedMNIST v2, Scientific Data 2023) train a BatchNorm ResNet-18
whose first convolution is 3x3 at stride 1 with no max-pool (this package's
`stem="cifar"`), with Adam at 1e-3, batch 128, for 100 epochs, the learning
rate x0.1 at epochs 50 and 75, and report the test metrics of the epoch with
the best validation AUC. `train` runs that protocol on one dataset and seed:
every epoch is checkpointed and scored on the validation split, so a killed
run resumes exactly (`baselines.train_and_select`, the recipe of the local
and pooled baselines too), and a finished one is read back from its summary.json.

Differences from the paper's code, kept because they are this package's
model: images are scaled to [0, 1] (theirs to [-1, 1]), the classifier starts
at zero and the last norm of each residual branch at scale 0.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from tff_vision import baselines, client_data, fileio, intervals, models, outputs, selection
from tff_vision.data import ImageDataset

# MedMNIST v2, Table 3 (ResNet-18 (28) rows): test (ACC, AUC).
PUBLISHED = {
    "retinamnist": {"test_accuracy": 0.524, "test_auc": 0.717},
    "breastmnist": {"test_accuracy": 0.863, "test_auc": 0.901},
}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The training recipe: the paper's unless a smaller one is asked for (tests, quick looks)."""

    epochs: int = 100
    milestones: tuple[int, ...] = (50, 75)
    learning_rate: float = 1e-3
    batch_size: int = 128

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"epochs, batch_size and learning_rate must be positive: {self}")

    def learning_rate_at(self, epoch_index: int) -> float:
        """The rate of epoch `epoch_index` (0-based), as PyTorch's `MultiStepLR(gamma=0.1)`."""
        return self.learning_rate * 0.1 ** sum(epoch_index >= m for m in self.milestones)


def build_model(dataset: ImageDataset, seed: int) -> tf.keras.Model:
    """The paper's ResNet-18 (28): BatchNorm, 3x3 stride-1 stem without max-pool."""
    return models.build_model(
        "resnet18",
        dataset.input_shape,
        dataset.num_classes,
        norm="batch",
        stem="cifar",
        seed=seed,
    )


def train(
    dataset: ImageDataset,
    seed: int,
    out: pathlib.Path,
    protocol: Protocol = Protocol(),
    printer: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains and scores one seed; returns (and writes) `out/summary.json`.

    The summary holds the selected epoch's test metrics with bootstrap
    intervals (`selection.Selection.report`), the last epoch's under "final",
    the protocol and the wall seconds of the call that finished it.
    """
    out = pathlib.Path(out)
    summary_path = out / "summary.json"
    previous = fileio.read_json(summary_path)
    if previous is not None:
        printer(
            f"[{dataset.name} seed {seed}] finished earlier "
            f"({out.parent.name}/{out.name}/summary.json): epoch {previous['selected_round']}  "
            + outputs.format_result(previous)
        )
        return previous
    start = time.monotonic()
    model = build_model(dataset, seed)
    optimizer = tf.keras.optimizers.Adam(protocol.learning_rate)
    held_out = selection.held_out(dataset, None, seed)
    chosen = selection.Selection("best_val", held_out, out / "checkpoints" / "selected.npz")
    examples = tf.data.Dataset.from_tensor_slices(
        (dataset.train.images, np.asarray(dataset.train.labels).reshape(-1).astype(np.int64))
    )
    preprocessing = client_data.Preprocessing(batch_size=protocol.batch_size, seed=seed)
    summary, resumed = baselines.train_and_select(
        f"{dataset.name} seed {seed}",
        model,
        optimizer,
        lambda epoch: preprocessing.apply(examples, epoch, "centralized"),
        protocol.epochs,
        chosen,
        checkpoint_dir=out / "checkpoints" / "model",
        log=out / "epochs.csv",
        learning_rate_fn=protocol.learning_rate_at,
        printer=printer,
    )
    summary.update(
        dataset=dataset.name,
        size=dataset.size,
        seed=seed,
        protocol=dataclasses.asdict(protocol),
        resumed_after_epoch=resumed,
        wall_seconds=time.monotonic() - start,
    )
    fileio.write_json_atomic(summary_path, summary)
    return summary


def federated_summaries(directory: pathlib.Path) -> list[dict[str, Any]]:
    """summary.json of every finished federated run below `directory` (a run or a sweep dir)."""
    found = []
    for path in sorted(pathlib.Path(directory).glob("**/summary.json")):
        summary = fileio.read_json(path)
        if summary is not None and "federated" in summary:
            found.append(summary)
    return found


def comparison_table(
    reproduced: dict[str, list[dict[str, Any]]],
    federated: dict[str, list[dict[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Published, reproduced and federated test metrics per dataset: means over seeds, intervals.

    Args:
        reproduced: dataset -> the `train` summaries of its seeds.
        federated: dataset -> `experiments.run` summaries (`federated_summaries`);
            each distinct setting (algorithm, model, partition) is a row.
    """
    rows = []
    for name in sorted(set(reproduced) | set(federated or {})):
        published = PUBLISHED.get(name)
        if published is not None:
            rows.append(_row(name, "MedMNIST v2 ResNet-18 (28), published", [published], None))
        if reproduced.get(name):
            label = "this protocol, centralized (reproduction)"
            rows.append(_row(name, label, reproduced[name], published))
        settings: dict[str, list[dict[str, Any]]] = {}
        for summary in (federated or {}).get(name, []):
            settings.setdefault(_federated_label(summary), []).append(summary)
        for label, summaries in settings.items():
            arms = [{**s["federated"], "wall_seconds": s.get("wall_seconds")} for s in summaries]
            rows.append(_row(name, label, arms, published))
    return pd.DataFrame(rows)


def _federated_label(summary: dict[str, Any]) -> str:
    algorithm = summary.get("algorithm", {}).get("name", "?")
    partition = summary.get("partition", {})
    clients = len(partition.get("client_examples", {}))
    return f"federated: {algorithm}, {partition.get('spec', '?')}, {clients} hospitals"


def _row(dataset: str, source: str, results: list[dict[str, Any]], published) -> dict[str, Any]:
    row: dict[str, Any] = {"dataset": dataset, "source": source, "seeds": len(results)}
    for metric in ("test_accuracy", "test_auc"):
        values = [float(r[metric]) for r in results]
        row[metric] = float(np.mean(values))
        row[f"{metric}_ci95"] = intervals.t_interval(values) if len(values) > 1 else None
        if published is not None:
            row[f"{metric}_vs_published"] = row[metric] - published[metric]
    walls = [r["wall_seconds"] for r in results if r.get("wall_seconds") is not None]
    row["wall_minutes"] = float(np.mean(walls)) / 60 if walls else None
    return row


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """`comparison_table` for reading: "mean [low, high]" to 3 decimals, signed gaps."""

    def with_interval(mean, interval) -> str:
        if interval is None or not np.all(np.isfinite(interval)):
            return f"{mean:.3f}"
        return f"{mean:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    def gap(value) -> str:
        return "" if value is None or pd.isna(value) else f"{value:+.3f}"

    out = table[["dataset", "source", "seeds"]].copy()
    for metric, short in (("test_accuracy", "ACC"), ("test_auc", "AUC")):
        out[short] = [with_interval(m, i) for m, i in zip(table[metric], table[f"{metric}_ci95"])]
        column = f"{metric}_vs_published"
        out[f"{short} vs published"] = [gap(v) for v in table.get(column, [None] * len(table))]
    out["wall min"] = ["" if pd.isna(v) else f"{v:.1f}" for v in table["wall_minutes"]]
    return out
