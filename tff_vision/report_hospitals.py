"""What each hospital gets from each method of a sweep, over seeds, on its own classes.

A finished cell scores, in summary.json's
``"per_hospital"`` (`tff_vision.hospitals`), the model each hospital would deploy
under every arm of the run on that hospital's own classes (all of them under
IID). Here those numbers
become methods: a cell's federated arm is its algorithm (``fedper``), its
fine-tuned arm ``<algorithm> + fine-tuning``, and its local-only and pooled
arms ``local-only`` and ``pooled``. The last two do not depend on the
algorithm, so the cells of one seed that repeat them are averaged into one.

`aggregate` gives each (model, partition, method, hospital) the mean over seeds
and its 95% t-interval, plus a ``worst`` row: the worst hospital of each seed.
`verdicts` asks whether a method is at least as good as each reference
(``local-only`` and ``fedavg``, the ones a hospital weighs joining against) at
every hospital. It is judged by the mean paired difference over seeds (a seed
gives both the same partition). The smallest difference across hospitals is
the method's margin, or its gap when negative, shown with its interval.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tff_vision import plots
from tff_vision.intervals import paired_difference, t_interval
from tff_vision.tables import to_markdown

LOCAL_ONLY = "local-only"
POOLED = "pooled"
FINE_TUNED = " + fine-tuning"
REFERENCES = (LOCAL_ONLY, "fedavg")
WORST = "worst"
METRICS = {"accuracy": "accuracy", "auc": "AUC"}
_KEYS = ["model", "partition", "method", "hospital"]
ROW_COLUMNS = ["model", "partition", "method", "seed", "hospital", *METRICS]
_ARM_METHODS = {"local_only": LOCAL_ONLY, "centralized": POOLED}


def method_name(algorithm: str, arm: str) -> str:
    """The method a cell's arm stands for: its algorithm, local-only, pooled or fine-tuned."""
    if arm == "federated":
        return algorithm
    if arm == "personalized":
        return algorithm + FINE_TUNED
    return _ARM_METHODS.get(arm, f"{algorithm} {arm}")


def cell_rows(cell: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (`ROW_COLUMNS`) of a cell's "per_hospital" entry; none without one.

    `cell` gives the model, partition, algorithm and seed (a row of `report.load_cells`).
    """
    arms = (summary.get("per_hospital") or {}).get("arms") or {}
    rows = []
    for arm, scores in arms.items():
        method = method_name(cell["algorithm"], arm)
        for hospital, accuracy in (scores.get("accuracy") or {}).items():
            row = {k: cell[k] for k in ("model", "partition", "seed")}
            row.update(method=method, hospital=str(hospital), accuracy=accuracy)
            row["auc"] = (scores.get("auc") or {}).get(hospital, math.nan)
            rows.append(row)
    return rows


def rows_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """`cell_rows` of every cell, one row per (model, partition, method, seed, hospital).

    Repeats of a method within a seed (local-only and pooled, once per algorithm) are averaged.
    """
    frame = pd.DataFrame(list(rows), columns=ROW_COLUMNS)
    for metric in METRICS:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    keys = ["model", "partition", "method", "seed", "hospital"]
    return frame.groupby(keys, sort=False, dropna=False)[list(METRICS)].mean().reset_index()


def _with_worst(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` plus, per (model, partition, method, seed), a ``worst`` hospital row of minima."""
    keys = ["model", "partition", "method", "seed"]
    worst = rows.groupby(keys, sort=False)[list(METRICS)].min().reset_index()
    worst["hospital"] = WORST
    return pd.concat([rows, worst[ROW_COLUMNS]], ignore_index=True)


def method_order(methods: Sequence[str], algorithms: Sequence[str]) -> list[str]:
    """References first (local-only, FedAvg), each algorithm then its fine-tuned arm, pooled last.

    Algorithms follow `algorithms` (the grid's order), then their order in `methods`.
    """
    ranked = [LOCAL_ONLY]
    for algorithm in dict.fromkeys(["fedavg", *algorithms]):
        ranked += [algorithm, algorithm + FINE_TUNED]
    ranked.append(POOLED)
    present = list(dict.fromkeys(methods))
    return [m for m in ranked if m in present] + [m for m in present if m not in ranked]


def _hospital_order(hospitals: Sequence[str]) -> list[str]:
    """Hospitals by number (names after), then ``worst``."""
    hospitals = list(hospitals)
    named = sorted(
        {h for h in hospitals if h != WORST}, key=lambda h: (not h.isdigit(), h.zfill(9))
    )
    return named + ([WORST] if WORST in hospitals else [])


def aggregate(rows: pd.DataFrame, algorithms: Sequence[str] = ()) -> pd.DataFrame:
    """n seeds, mean and 95% t-interval of accuracy and AUC per model, partition, method, hospital.

    Columns: model, partition, method, hospital, n, then ``<metric>_mean``,
    ``<metric>_ci_low`` and ``<metric>_ci_high`` for accuracy and AUC (the
    interval NaN for one seed). Hospital ``worst`` is each seed's worst hospital.
    """
    full = _with_worst(rows)
    spec: dict[str, Any] = {"n": ("seed", "nunique")}
    for metric in METRICS:
        spec[f"{metric}_mean"] = (metric, "mean")
        spec[f"{metric}_ci_low"] = (metric, lambda s: t_interval(s.dropna())[0])
        spec[f"{metric}_ci_high"] = (metric, lambda s: t_interval(s.dropna())[1])
    agg = full.groupby(_KEYS, sort=False).agg(**spec).reset_index()
    order = {
        "method": method_order(agg["method"], algorithms),
        "hospital": _hospital_order(agg["hospital"]),
    }
    for key, categories in order.items():
        agg[key] = pd.Categorical(agg[key], categories=categories, ordered=True)
    agg = agg.sort_values(_KEYS, kind="stable").reset_index(drop=True)
    for key in order:
        agg[key] = agg[key].astype(str)
    return agg


def verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """Each method against each reference present, at every hospital, by paired differences.

    One row per (model, partition, method, reference, metric): ``margin`` (the
    smallest mean paired difference method − reference over the hospitals; < 0
    is a gap), ``hospital`` (where it is smallest), ``ci_low``/``ci_high``
    (its 95% t-interval), ``n`` (paired seeds) and ``at_least_as_good`` (margin >= 0).
    """
    out = []
    for (model, part), group in rows.groupby(["model", "partition"], sort=False):
        methods = list(dict.fromkeys(group["method"]))
        references = [r for r in REFERENCES if r in methods]
        for method in methods:
            if method in REFERENCES or method == POOLED:
                continue
            for reference in references:
                for metric in METRICS:
                    row = _verdict(group, method, reference, metric)
                    if row is not None:
                        out.append({"model": model, "partition": part, **row})
    columns = ["model", "partition", "method", "reference", "metric", "margin", "hospital"]
    return pd.DataFrame(out, columns=columns + ["ci_low", "ci_high", "n", "at_least_as_good"])


def _verdict(group: pd.DataFrame, method: str, reference: str, metric: str) -> dict | None:
    """The smallest paired difference of `method` over `reference` across hospitals."""

    def by_hospital(name: str) -> dict[str, pd.Series]:
        mine = group[group["method"] == name]
        return {h: s.set_index("seed")[metric] for h, s in mine.groupby("hospital", sort=False)}

    a, b = by_hospital(method), by_hospital(reference)
    diffs = {h: paired_difference(a[h], b[h]) for h in a if h in b}
    diffs = {h: d for h, d in diffs.items() if d[0] > 0}
    if not diffs:
        return None
    hospital = min(diffs, key=lambda h: diffs[h][1])
    n, margin, low, high = diffs[hospital]
    return {
        "method": method,
        "reference": reference,
        "metric": metric,
        "margin": margin,
        "hospital": hospital,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "at_least_as_good": bool(margin >= 0),
    }


def _cell(row: pd.Series, metric: str) -> str:
    mean, low, high = (row[f"{metric}_{s}"] for s in ("mean", "ci_low", "ci_high"))
    if not np.isfinite(mean):
        return "–"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _verdict_line(rows: pd.DataFrame, metric: str) -> str:
    """ "fedper: ≥ local-only (margin +0.012 at hospital 2, [..]); short of fedavg by ..."."""
    parts = []
    for _, v in rows.iterrows():
        interval = f"n={v['n']}, no interval"
        if np.isfinite(v["ci_low"]):
            interval = f"difference 95% CI [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}], n={v['n']}"
        if v["at_least_as_good"]:
            parts.append(
                f"≥ {v['reference']} at every hospital (smallest margin {v['margin']:+.3f}, "
                f"hospital {v['hospital']}, {interval})"
            )
        else:
            gap = f"{-v['margin']:.3f}" if -v["margin"] >= 0.0005 else "less than 0.001"
            parts.append(
                f"short of {v['reference']} at hospital {v['hospital']} by {gap} ({interval})"
            )
    every = rows["at_least_as_good"].all()
    head = "**at least as good as every reference at every hospital**" if every else "falls short"
    return f"- {rows['method'].iloc[0]} ({METRICS[metric]}): {head}; " + "; ".join(parts)


def markdown(agg: pd.DataFrame, verdict_frame: pd.DataFrame) -> str:
    """Per (model, partition): a method x hospital table per metric, then the verdicts."""
    blocks = [
        "Each hospital's own model on the test examples of the classes it holds: mean "
        "[95% t-interval] over seeds; `worst` is each seed's worst hospital. A method is at "
        "least as good as a reference at a hospital when its mean paired difference over seeds "
        "is >= 0; the verdicts give the smallest difference across hospitals."
    ]
    for (model, part), group in agg.groupby(["model", "partition"], sort=False):
        hospitals = list(dict.fromkeys(group["hospital"]))
        for metric, name in METRICS.items():
            display = pd.DataFrame({"method": list(dict.fromkeys(group["method"]))})
            for hospital in hospitals:
                cells = group[group["hospital"] == hospital].set_index("method")
                label = "worst hospital" if hospital == WORST else f"hospital {hospital}"
                display[label] = [
                    _cell(cells.loc[m], metric) if m in cells.index else "–"
                    for m in display["method"]
                ]
            counts = group.groupby("method", sort=False)["n"].max()
            display["n"] = [int(counts.get(m, 0)) for m in display["method"]]
            blocks.append(f"### {name}: model {model}, partition {part}\n\n{to_markdown(display)}")
        mine = verdict_frame[
            (verdict_frame["model"] == model) & (verdict_frame["partition"] == part)
        ]
        rank = {m: i for i, m in enumerate(dict.fromkeys(group["method"]))}
        verdict_groups = sorted(
            mine.groupby(["method", "metric"], sort=False), key=lambda g: rank.get(g[0][0], 0)
        )
        lines = [_verdict_line(v, metric) for (_, metric), v in verdict_groups]
        if lines:
            blocks.append(f"Verdicts, model {model}, partition {part}:\n\n" + "\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot(
    agg: pd.DataFrame, out_dir: os.PathLike | str, name: Callable[[str, str], str]
) -> list[pathlib.Path]:
    """A per-hospital bar chart (one bar per method, 95% CI bars) per (model, partition).

    `name(model, partition)` gives each file's stem.
    """
    files = []
    for (model, part), group in agg.groupby(["model", "partition"], sort=False):
        group = group[group["hospital"] != WORST]
        arms, errors = {}, {}
        for method, rows in group.groupby("method", sort=False):
            rows = rows.set_index("hospital")
            arms[method] = {m: rows[f"{m}_mean"].to_dict() for m in METRICS}
            errors[method] = {
                m: (rows[f"{m}_ci_high"] - rows[f"{m}_mean"]).fillna(0.0).to_dict() for m in METRICS
            }
        title = f"{model}, {part}: mean and 95% CI over seeds"
        path = pathlib.Path(out_dir) / f"{name(model, part)}.png"
        files.append(plots.plot_per_hospital(arms, path, title=title, errors=errors))
    return files
