"""The sweep report's metric plots, and the metrics a report can show.

`METRICS` names each metric a cell's summary gives and whether higher is
better; the plots draw the per-(model, partition, algorithm) aggregate of
`report.aggregate` (means with their 95% t-intervals over seeds): against the
Dirichlet alpha or classes per client, as grouped bars, or against the
megabytes each run moved. Each is written atomically by `plots.save_figure`.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pandas as pd

from tff_vision import partition as partition_lib
from tff_vision import plots

plt = plots.plt  # pyplot with the non-interactive backend that `plots` selects.

# Metric -> (display name, True if higher is better).
METRICS = {
    "test_accuracy": ("accuracy", True),
    "test_auc": ("AUC", True),
    "test_loss": ("loss", False),
    # On the worst hospital's own classes (label-skewed partitions; NaN otherwise).
    "worst_subset_accuracy": ("worst-hospital accuracy", True),
    # Megabytes the run moved between server and clients, both ways (summary.json).
    "total_mb": ("MB moved", False),
}


def _series_label(algorithm: str, model: str, several_models: bool) -> str:
    return f"{algorithm} ({model})" if several_models else str(algorithm)


def _with_parameter(agg: pd.DataFrame, kind: str) -> pd.DataFrame:
    params = []
    for spec in agg["partition"]:
        name, param = partition_lib.parse_spec(spec)
        params.append(param if name == kind else None)
    out = agg.assign(param=params)
    return out[out["param"].notna()]


def plot_vs_parameter(
    agg: pd.DataFrame, kind: str, metric: str, path: os.PathLike | str, xlabel: str, log_x: bool
) -> pathlib.Path | None:
    """Mean and 95% CI of `metric` against the parameter of `kind` partitions (None if none)."""
    cells = _with_parameter(agg, kind)
    if cells.empty:
        return None
    several = agg["model"].nunique() > 1
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (alg, model), group in cells.groupby(["algorithm", "model"], sort=False):
        group = group.sort_values("param")
        ax.errorbar(
            group["param"].astype(float),
            group[f"{metric}_mean"],
            yerr=_half_widths(group, metric),
            marker="o",
            capsize=3,
            linewidth=1.4,
            label=_series_label(alg, model, several),
        )
    values = sorted(cells["param"].astype(float).unique())
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values])
    ax.minorticks_off()
    title = f"test {METRICS[metric][0]} vs {xlabel} (mean, 95% CI over seeds)"
    return _save_metric_plot(fig, ax, metric, xlabel, title, path)


def _half_widths(agg: pd.DataFrame, metric: str) -> np.ndarray:
    """Error bars of the 95% t-interval of the mean (symmetric); 0 where undefined (one seed)."""
    width = agg[f"{metric}_ci_high"].astype(float) - agg[f"{metric}_mean"].astype(float)
    return np.nan_to_num(width.to_numpy(dtype=float))


def plot_algorithms(agg: pd.DataFrame, metric: str, path: os.PathLike | str) -> pathlib.Path:
    """Grouped bars: a group per partition, a bar per algorithm (and model), 95% CI bars."""
    partitions = list(dict.fromkeys(agg["partition"]))
    several = agg["model"].nunique() > 1
    series = list(dict.fromkeys(zip(agg["algorithm"], agg["model"])))
    width = 0.8 / len(series)
    x = np.arange(len(partitions))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(partitions) * max(1, len(series) / 2)), 4.2))
    for i, (alg, model) in enumerate(series):
        group = agg[(agg["algorithm"] == alg) & (agg["model"] == model)].set_index("partition")
        means = [group[f"{metric}_mean"].get(p, np.nan) for p in partitions]
        errors = _half_widths(group.reindex(partitions), metric)
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            means,
            width,
            yerr=errors,
            capsize=3,
            label=_series_label(alg, model, several),
        )
    ax.set_xticks(x)
    rotate = len(partitions) > 4
    ax.set_xticklabels(partitions, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(f"test {METRICS[metric][0]}")
    if metric != "test_loss":
        ax.set_ylim(0.0, 1.0)
    ax.set_title(f"test {METRICS[metric][0]} by partition and algorithm (mean, 95% CI over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return plots.save_figure(fig, path)


def plot_vs_communication(
    agg: pd.DataFrame, metric: str, path: os.PathLike | str
) -> pathlib.Path | None:
    """Mean `metric` against mean MB moved, a marker per algorithm (and model), a point per
    partition; None if no cell recorded its communication."""
    cells = agg[agg["total_mb_mean"].notna()]
    if cells.empty:
        return None
    several = agg["model"].nunique() > 1
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (alg, model), group in cells.groupby(["algorithm", "model"], sort=False):
        ax.scatter(
            group["total_mb_mean"],
            group[f"{metric}_mean"],
            label=_series_label(alg, model, several),
        )
        for _, row in group.iterrows():
            ax.annotate(row["partition"], (row["total_mb_mean"], row[f"{metric}_mean"]), fontsize=7)
    xlabel = "MB moved per run (server to clients and back)"
    title = f"test {METRICS[metric][0]} against communication (means over seeds)"
    return _save_metric_plot(fig, ax, metric, xlabel, title, path)


def _save_metric_plot(fig, ax, metric: str, xlabel: str, title: str, path) -> pathlib.Path:
    """Labels, grid and legend of a plot of test `metric`; saves it to `path`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test {METRICS[metric][0]}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return plots.save_figure(fig, path)
