"""PNG figures of training curves, confusion matrices and partitions.

Uses matplotlib's non-interactive "Agg" backend. Every figure is written
atomically: rendered to a temporary file next to the target, then moved over
it with `os.replace`, so a reader (or a crashed run) never sees a partial PNG.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tff_vision import fileio

_DPI = 120
_MAX_TICK_CHARS = 24
_ACCURACY_SERIES = (
    ("train_accuracy", "train accuracy", False),
    ("eval_accuracy", "test accuracy", True),
    ("eval_auc", "test AUC", True),
    ("val_accuracy", "val accuracy", True),
    ("val_auc", "val AUC", True),
)
_LOSS_SERIES = (
    ("train_loss", "train loss", False),
    ("eval_loss", "test loss", True),
    ("val_loss", "val loss", True),
)


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> pathlib.Path:
    """Writes `fig` as a PNG at `path` atomically (`fileio`), then closes it.

    Returns:
        `path` as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    try:
        fileio.write_with_atomic(
            path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
        )
    finally:
        plt.close(fig)
    return path


def truncate_label(label: object, max_chars: int = _MAX_TICK_CHARS) -> str:
    """`str(label)`, cut to `max_chars` characters with an ellipsis if longer."""
    text = str(label)
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "\u2026"


def _plot_series(ax: plt.Axes, metrics: pd.DataFrame, x: pd.Series, series) -> None:
    for column, label, is_eval in series:
        if column not in metrics.columns:
            continue
        values = pd.to_numeric(metrics[column], errors="coerce")
        keep = values.notna() & x.notna()
        if not keep.any():
            continue
        marker, size = ("o", 4) if is_eval else (".", 3)
        ax.plot(x[keep], values[keep], label=label, linewidth=1.2, marker=marker, markersize=size)


def _plot_baselines(
    ax: plt.Axes, baselines: dict[str, dict[str, float]], key: str, colors: dict[str, str]
) -> None:
    for label, values in baselines.items():
        value = values.get(key)
        if value is None or not np.isfinite(value):
            continue
        ax.axhline(
            float(value), linestyle="--", linewidth=1.0, color=colors[label], label=f"{label}"
        )


def plot_curves(
    metrics: pd.DataFrame,
    path: str | os.PathLike,
    baselines: dict[str, dict[str, float]] | None = None,
    title: str = "",
    selected_round: int | None = None,
) -> pathlib.Path:
    """Accuracy and loss against round, side by side.

    Args:
        metrics: One row per round: a `round` column (the index is used if it
            is missing), and any of `train_accuracy`, `train_loss`,
            `eval_accuracy`, `eval_loss`, `eval_auc` (test split), `val_accuracy`,
            `val_auc`, `val_loss`. NaN entries (e.g.
            evaluation columns on non-evaluation rounds) are skipped; missing
            columns are ignored.
        path: Where to write the PNG.
        baselines: Label -> `{"accuracy": a, "loss": l}` (either key may be
            missing), drawn as dashed horizontal lines in the matching panel.
        title: Figure title.
        selected_round: The round the run reports (--select), drawn as a dotted line.

    Returns:
        `path` as a `pathlib.Path`.
    """
    baselines = baselines or {}
    if "round" in metrics.columns:
        x = pd.to_numeric(metrics["round"], errors="coerce")
    else:
        x = pd.Series(np.arange(len(metrics)), index=metrics.index, dtype=float)
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["k"])
    colors = {label: cycle[(i + 3) % len(cycle)] for i, label in enumerate(baselines)}

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, series, key, name in (
        (acc_ax, _ACCURACY_SERIES, "accuracy", "accuracy"),
        (loss_ax, _LOSS_SERIES, "loss", "loss"),
    ):
        _plot_series(ax, metrics, x, series)
        _plot_baselines(ax, baselines, key, colors)
        if selected_round is not None:
            ax.axvline(selected_round, linestyle=":", color="k", label="reported round")
        ax.set_xlabel("round")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_vs_bytes(
    metrics: pd.DataFrame, path: str | os.PathLike, title: str = ""
) -> pathlib.Path:
    """Test accuracy and AUC against the megabytes moved so far (down + up), per eval round.

    `metrics` is a run's metrics.csv: `bytes_down_cumulative`, `bytes_up_cumulative`
    and the `eval_accuracy` / `eval_auc` of its evaluated rounds.
    """
    moved = (metrics["bytes_down_cumulative"] + metrics["bytes_up_cumulative"]) / 1e6
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for column, label in (("eval_accuracy", "test accuracy"), ("eval_auc", "test AUC")):
        if column in metrics.columns:
            values = pd.to_numeric(metrics[column], errors="coerce")
            keep = values.notna()
            ax.plot(moved[keep], values[keep], marker="o", markersize=4, label=label)
    ax.set_xlabel("MB moved so far (server to clients and back)")
    ax.set_title(title or "accuracy against communication")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_hospital(
    arms: dict[str, dict[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    errors: dict[str, dict[str, Any]] | None = None,
) -> pathlib.Path:
    """Each hospital's accuracy and AUC on its own classes, one bar per arm, side by side.

    Args:
        arms: Arm label -> `{"accuracy": {hospital: value}, "auc": {...}}`
            (summary.json's `per_hospital["arms"]`); NaN values draw no bar.
        path: Where to write the PNG.
        title: Figure title.
        errors: Optional error bar half-widths, keyed as `arms`.
    """
    hospitals = list(dict.fromkeys(h for arm in arms.values() for h in arm.get("accuracy", {})))
    x = np.arange(len(hospitals))
    width = 0.8 / max(1, len(arms))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(hospitals) + 4), 4))
    for ax, metric in zip(axes, ("accuracy", "auc")):
        for i, (label, arm) in enumerate(arms.items()):
            values = [arm.get(metric, {}).get(h, np.nan) for h in hospitals]
            bars = (errors or {}).get(label, {}).get(metric, {})
            yerr = [bars.get(h, 0.0) for h in hospitals] if bars else None
            ax.bar(
                x - 0.4 + width * (i + 0.5),
                values,
                width,
                yerr=yerr,
                capsize=3 if yerr else 0,
                label=label.replace("_", " "),
            )
        ax.set_xticks(x)
        ax.set_xticklabels([f"hospital {h}" for h in hospitals])
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{'AUC' if metric == 'auc' else metric} on the hospital's own classes")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _annotated_heatmap(
    ax: plt.Axes, colour: np.ndarray, counts: np.ndarray, vmax: float, cmap: str, aspect: str
) -> matplotlib.image.AxesImage:
    """imshow of `colour` with each cell annotated by its integer count."""
    image = ax.imshow(colour, cmap=cmap, vmin=0.0, vmax=vmax, aspect=aspect)
    fontsize = 8 if max(counts.shape) <= 10 else 6
    for (row, col), count in np.ndenumerate(counts):
        dark = vmax > 0 and colour[row, col] > 0.5 * vmax
        ax.text(
            col,
            row,
            f"{int(count)}",
            ha="center",
            va="center",
            fontsize=fontsize,
            color="white" if dark else "black",
        )
    return image


def _set_ticks(ax: plt.Axes, x_labels: Sequence[object], y_labels: Sequence[object]) -> None:
    x_text = [truncate_label(label) for label in x_labels]
    y_text = [truncate_label(label) for label in y_labels]
    rotate = len(x_text) > 6 or any(len(t) > 6 for t in x_text)
    ax.set_xticks(np.arange(len(x_text)))
    ax.set_xticklabels(x_text, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(np.arange(len(y_text)))
    ax.set_yticklabels(y_text)


def row_fractions(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; all-zero rows stay zero (no warnings)."""
    confusion = np.asarray(confusion, np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def plot_confusion_matrix(
    confusion: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    normalize: bool = True,
) -> pathlib.Path:
    """Confusion-matrix heat map with raw counts annotated in each cell.

    Args:
        confusion: `[C, C]` counts; rows are true classes, columns predicted.
        class_names: C names for the tick labels (long names are truncated).
        path: Where to write the PNG.
        title: Axes title.
        normalize: Colour by row-normalised fraction (else by raw count).

    Returns:
        `path` as a `pathlib.Path`.
    """
    confusion = np.asarray(confusion)
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(f"confusion shape {confusion.shape} does not match {n} class names")
    colour = row_fractions(confusion) if normalize else confusion.astype(np.float64)
    vmax = 1.0 if normalize else float(max(colour.max(initial=0.0), 1.0))
    side = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = _annotated_heatmap(ax, colour, confusion, vmax, "Blues", "equal")
    colour_label = "fraction of true class" if normalize else "count"
    axes = ((class_names, "predicted"), (class_names, "true"))
    return _finish_heatmap(fig, ax, image, colour_label, axes, title, path)


def plot_class_counts(
    counts: pd.DataFrame, path: str | os.PathLike, title: str = ""
) -> pathlib.Path:
    """Client x class heat map of a partition's example counts.

    Args:
        counts: Rows = clients (index = client labels), columns = classes,
            values = example counts.
        path: Where to write the PNG.
        title: Axes title.

    Returns:
        `path` as a `pathlib.Path`.
    """
    values = counts.fillna(0).to_numpy(dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"counts must be a non-empty clients x classes table, got {values.shape}")
    num_clients, num_classes = values.shape
    # Extra height leaves room for rotated (up to 24-character) class names.
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.6 * num_classes + 2.5), max(3.5, 0.45 * num_clients + 3.0))
    )
    vmax = float(max(values.max(), 1.0))
    image = _annotated_heatmap(ax, values, values, vmax, "Greens", "auto")
    axes = ((list(counts.columns), "class"), (list(counts.index), "client"))
    return _finish_heatmap(fig, ax, image, "examples", axes, title, path)


def _finish_heatmap(fig, ax, image, colour_label: str, axes, title: str, path) -> pathlib.Path:
    """Colour bar, tick labels, axis labels and title of a heat map; then saves it.

    `axes` is `((x tick labels, x label), (y tick labels, y label))`.
    """
    (x_ticks, x_label), (y_ticks, y_label) = axes
    fig.colorbar(image, ax=ax, label=colour_label)
    _set_ticks(ax, x_ticks, y_ticks)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
