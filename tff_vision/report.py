"""Tables and plots of a sweep (see `tff_vision.sweep`): seed means, their uncertainty, verdicts.

Design
------
A cell counts once its run wrote ``summary.json`` (last, atomically). For each
such cell, ``flags.json`` says what ran (partition, algorithm, model, seed; the
sweep.json record fills in if it is missing) and ``summary.json`` gives the
federated model's final test metrics; `load_cells` puts them into a DataFrame
with one row per cell. Unfinished cells are left out and counted in a note.

`aggregate` groups that frame by (model, partition, algorithm) with pandas and
gives n, mean, standard deviation (``ddof=1``) and the 95% t-interval of the
mean of every metric (the last two undefined, so not shown, for a single
seed). `results_table` lays the aggregate out with one row per (model,
partition) and one column group per algorithm. A row names a best algorithm
by the chosen metric only when the data show one: test metrics over a few
hundred images move by a few points from seed to seed, so a higher mean alone
proves nothing. Cells of one seed share partition and initialization, so
algorithms are compared in pairs by seed, and the best must beat every other
algorithm of the row with the 95% t-interval of the mean paired difference
excluding 0 (`compare_algorithms`); otherwise the row is a tie, and one seed
gives no comparison. Rows, columns and bars follow the grid's order as
recorded in sweep.json (partitions as first given), not alphabetical order.

`write_report` writes everything into ``<sweep_dir>/report/``:

    cells.csv             one row per finished cell
    aggregate.csv         n / mean / std / 95% CI per (model, partition, algorithm), numeric
    table.csv, table.md   "mean ± std" and "[95% CI]" cells; per row the paired verdict:
                          best (column / bold) or tie, and why (comparison column)
    accuracy_vs_alpha.png dirichlet:ALPHA cells: metric vs alpha (log x), a line per algorithm
    accuracy_vs_k.png     classes:K cells: metric vs K
    algorithms.png        grouped bars: partition x algorithm, 95% CI error bars
    accuracy_vs_mb.png    metric against the MB each run moved (summary.json "communication")
    partitions/<p>.png    client x class counts of each partition (first seed's partition.csv)
    hospitals.csv, .md    each hospital's own model on the classes it holds (all, under IID),
                          per method (algorithm, local-only, pooled, fine-tuned), mean and 95% CI
    hospital_verdicts.csv each method against local-only and FedAvg at every hospital
    hospitals/<m>__<p>.png  per-hospital bars with 95% CI bars (`report_hospitals`)

(the ``accuracy`` in plot names is the metric's short name, e.g. ``auc_vs_alpha.png``
for ``--metric=test_auc``). cells.csv and aggregate.csv also carry
``worst_subset_accuracy``, the federated model's accuracy at the worst hospital
on that hospital's own classes (``--metric=worst_subset_accuracy`` tables and
plots it). A plot whose cells are absent is skipped with a
note. Every file is written atomically. No TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tff_vision import fileio, plots, report_hospitals, sweep
from tff_vision.intervals import paired_difference, t_interval
from tff_vision.report_plots import (
    METRICS,
    plot_algorithms,
    plot_vs_communication,
    plot_vs_parameter,
)
from tff_vision.tables import to_markdown

REPORT_DIR = "report"
CELL_COLUMNS = (
    "name",
    "partition",
    "algorithm",
    "model",
    "seed",
    "test_accuracy",
    "test_auc",
    "test_loss",
    "worst_subset_accuracy",
    "total_mb",
    "rounds",
    "wall_seconds",
)
_TABLE_METRICS = ("test_accuracy", "test_auc")
_MISSING = "–"


class ReportError(ValueError):
    """A report that cannot be made; the message is one line naming the problem and the fix."""


@dataclasses.dataclass
class Report:
    """What `write_report` produced."""

    cells: pd.DataFrame
    aggregate: pd.DataFrame
    table: pd.DataFrame
    markdown: str
    files: list[pathlib.Path]
    notes: list[str]
    # `report_hospitals`' tables; empty if no cell scored each hospital.
    hospitals: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    hospital_verdicts: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    hospitals_markdown: str = ""


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; use one of: {', '.join(METRICS)}")


def _short(metric: str) -> str:
    return metric.removeprefix("test_")


# ---------------------------------------------------------------------------
# Loading.


def _known_cells(sweep_dir: pathlib.Path) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    """(output dir, sweep.json record or {}) of every cell: recorded ones first, in order."""
    state = sweep.SweepState.load(sweep_dir)
    found = {}
    for record in state.records.values():
        found[sweep_dir / sweep.CELLS_DIR / record["name"]] = record
    cells_dir = sweep_dir / sweep.CELLS_DIR
    if cells_dir.is_dir():
        for path in sorted(cells_dir.iterdir()):
            if path.is_dir() and path not in found:
                found[path] = {}
    return list(found.items())


def load_cells(sweep_dir: os.PathLike | str) -> tuple[pd.DataFrame, list[str]]:
    """Every finished cell of a sweep as one row (columns `CELL_COLUMNS`), plus notes.

    Rows follow the sweep's cell order (sweep.json), then any unrecorded cell
    directories by name.

    Raises:
        ReportError: If the sweep directory does not exist or sweep.json is unreadable.
    """
    frame, _, notes = _load(sweep_dir)
    return frame, notes


def _load(sweep_dir: os.PathLike | str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """`load_cells`'s frame and notes, and the cells' per-hospital rows (`report_hospitals`)."""
    sweep_dir = pathlib.Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"--sweep_dir={sweep_dir} does not exist; pass the directory of a sweep")
    try:
        known = _known_cells(sweep_dir)
    except sweep.SweepError as e:
        raise ReportError(str(e)) from None
    rows, hospital_rows, notes, unfinished = [], [], [], []
    for out, record in known:
        summary = fileio.read_json(out / "summary.json")
        if summary is None:
            if (out / "summary.json").exists():
                notes.append(f"{out / 'summary.json'} is unreadable; that cell is left out")
            else:
                unfinished.append(out.name)
            continue
        row = _cell_row(out, record, summary)
        if row is None:
            notes.append(f"{out} has no flags.json or sweep.json record; that cell is left out")
            continue
        rows.append(row)
        hospital_rows += report_hospitals.cell_rows(row, summary)
    if unfinished:
        notes.append(
            f"{len(unfinished)} cell(s) not finished (no summary.json), not in the report: "
            + ", ".join(unfinished[:3])
            + (", ..." if len(unfinished) > 3 else "")
        )
    frame = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    for column in CELL_COLUMNS[CELL_COLUMNS.index("test_accuracy") :]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame, report_hospitals.rows_frame(hospital_rows), notes


def _cell_row(
    out: pathlib.Path, record: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any] | None:
    """A finished cell's row of `CELL_COLUMNS`; None if nothing says what it ran."""
    flags = fileio.read_json(out / "flags.json") or {}
    fed = summary.get("federated") or {}
    row = {"name": out.name}
    for key in ("partition", "algorithm", "model", "seed"):
        row[key] = flags.get(key, record.get(key))
    if any(row[k] is None for k in ("partition", "algorithm", "model", "seed")):
        return None
    row["seed"] = int(row["seed"])
    for key in ("test_accuracy", "test_auc", "test_loss", "worst_subset_accuracy", "rounds"):
        row[key] = fed.get(key)
    row["wall_seconds"] = summary.get("wall_seconds")
    total = (summary.get("communication") or {}).get("total")
    row["total_mb"] = (total["total_down"] + total["total_up"]) / 1e6 if total else None
    return row


def grid_order(sweep_dir: os.PathLike | str, frame: pd.DataFrame) -> dict[str, list]:
    """Order of partitions, algorithms, models and seeds: as in sweep.json, then as in `frame`."""
    try:
        recorded = sweep.SweepState.load(sweep_dir).cells()
    except sweep.SweepError:
        recorded = []
    order = {}
    for key in ("partition", "algorithm", "model", "seed"):
        values = [getattr(c, key) for c in recorded] + frame[key].tolist()
        order[key] = list(dict.fromkeys(values))
    return order


# ---------------------------------------------------------------------------
# Aggregation and tables.


def aggregate(frame: pd.DataFrame, order: dict[str, list] | None = None) -> pd.DataFrame:
    """n, mean, std (ddof=1) and 95% t-interval over seeds per (model, partition, algorithm).

    Columns: model, partition, algorithm, n, then ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_ci_low`` and ``<metric>_ci_high`` for each of
    `METRICS` (NaN for n = 1). Rows are in `order` (default: first appearance in `frame`).
    """
    keys = ["model", "partition", "algorithm"]
    spec = {"n": ("seed", "nunique")}
    for metric in METRICS:
        spec[f"{metric}_mean"] = (metric, "mean")
        spec[f"{metric}_std"] = (metric, lambda s: s.std(ddof=1))
        spec[f"{metric}_ci_low"] = (metric, lambda s: t_interval(s.dropna())[0])
        spec[f"{metric}_ci_high"] = (metric, lambda s: t_interval(s.dropna())[1])
    agg = frame.groupby(keys, sort=False).agg(**spec).reset_index()
    order = order or {k: list(dict.fromkeys(frame[k])) for k in keys}
    for key in keys:
        agg[key] = pd.Categorical(agg[key], categories=order[key], ordered=True)
    agg = agg.sort_values(keys, kind="stable").reset_index(drop=True)
    for key in keys:
        agg[key] = agg[key].astype(object)
    return agg


def _mean_std(mean: float, std: float) -> str:
    if mean is None or not np.isfinite(mean):
        return _MISSING
    if std is None or not np.isfinite(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def _interval(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return _MISSING
    return f"[{low:.3f}, {high:.3f}]"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A row's verdict: `best` (an algorithm, or "" for a tie or too few seeds) and why."""

    best: str
    note: str


def compare_algorithms(values: dict[str, pd.Series], metric: str) -> Comparison:
    """The best algorithm of a row by `metric`, only if it beats each other one across seeds.

    `values` maps algorithm -> `metric` by seed. Cells of one seed share the
    partition and initialization, so they are compared in pairs: an algorithm
    is best if, against every other one, the 95% t-interval of the mean paired
    difference excludes 0 in its favour. Otherwise the row is a tie (or, below
    two shared seeds, has no comparison at all).
    """
    name, higher = METRICS[metric][0], METRICS[metric][1]
    values = {a: v.dropna() for a, v in values.items() if len(v.dropna())}
    if len(values) < 2:
        return Comparison("", f"only {', '.join(values) or 'no algorithm'}: nothing to compare")
    order = sorted(values, key=lambda a: -values[a].mean() if higher else values[a].mean())
    pairs = {
        (a, b): paired_difference(values[a], values[b]) for a in values for b in values if a != b
    }

    def beats(a: str, b: str) -> bool:
        n, _, low, high = pairs[(a, b)]
        return n >= 2 and (low > 0 if higher else high < 0)

    def describe(a: str, b: str) -> str:
        n, mean, low, high = pairs[(a, b)]
        return (
            f"{a} − {b} {name} {mean:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] over {n} paired seeds"
        )

    for a in order:
        if all(beats(a, b) for b in values if b != a):
            rival = next(b for b in order if b != a)
            return Comparison(a, f"{a} is best: {describe(a, rival)}")
    leader = order[0]
    rival = next(b for b in order[1:] if not beats(leader, b))
    n = pairs[(leader, rival)][0]
    if n < 2:
        return Comparison(
            "", f"no best: {n} paired seed(s) of {leader} and {rival}; comparing needs 2 or more"
        )
    tied = [leader] + [b for b in order[1:] if not beats(leader, b)]
    return Comparison("", f"tie ({', '.join(tied)}): {describe(leader, rival)} includes 0")


def table_metrics(metric: str) -> list[str]:
    """Metrics shown in the table: accuracy and AUC, plus `metric` if it is neither."""
    return list(_TABLE_METRICS) + ([metric] if metric not in _TABLE_METRICS else [])


def results_table(
    agg: pd.DataFrame, cells: pd.DataFrame, metric: str = "test_accuracy"
) -> pd.DataFrame:
    """One row per (model, partition); per algorithm its metrics over seeds; the paired verdict.

    Columns: ``model``, ``partition``, then for each algorithm ``<algorithm>
    <metric name>`` ("mean ± std", e.g. ``fedavg accuracy``), ``<algorithm>
    <metric name> 95% CI`` ("[low, high]", the t-interval of the mean) for
    accuracy, AUC (and `metric`), and ``<algorithm> n``; then ``best`` (an
    algorithm, or empty) and ``comparison`` (`compare_algorithms` on `cells`).
    """
    _check_metric(metric)
    shown = table_metrics(metric)
    algorithms = list(dict.fromkeys(agg["algorithm"]))
    rows = []
    for (model, part), group in agg.groupby(["model", "partition"], sort=False):
        by_alg = {r["algorithm"]: r for _, r in group.iterrows()}
        row: dict[str, Any] = {"model": model, "partition": part}
        for alg in algorithms:
            r = by_alg.get(alg)
            for m in shown:
                label = f"{alg} {METRICS[m][0]}"
                row[label] = _mean_std(r[f"{m}_mean"], r[f"{m}_std"]) if r is not None else _MISSING
                row[f"{label} 95% CI"] = (
                    _interval(r[f"{m}_ci_low"], r[f"{m}_ci_high"]) if r is not None else _MISSING
                )
            row[f"{alg} n"] = int(r["n"]) if r is not None else 0
        mine = cells[(cells["model"] == model) & (cells["partition"] == part)]
        values = {
            alg: sub.groupby("seed")[metric].mean()
            for alg, sub in mine.groupby("algorithm", sort=False)
        }
        verdict = compare_algorithms(values, metric)
        row["best"], row["comparison"] = verdict.best, verdict.note
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_report(table: pd.DataFrame, metric: str = "test_accuracy") -> str:
    """The table as markdown: one block per model, algorithms as columns, a proven best in bold.

    Each cell reads ``accuracy / AUC (n=seeds)`` (plus the loss if that is the
    metric), each as ``mean ± std [95% CI]`` over seeds (mean only for one
    seed); the last column gives each row's paired comparison.
    """
    shown = table_metrics(metric)
    algorithms = [c[: -len(" n")] for c in table.columns if c.endswith(" n")]
    names = " / ".join(f"test {METRICS[m][0]}" for m in shown)
    blocks = [
        f"Final {names} of the federated model over seeds: mean ± std [95% t-interval of the "
        f"mean] (n = seeds). **Bold**: the row's best {METRICS[metric][0]}, marked only where it "
        "beats every other algorithm in a paired comparison across seeds (a seed gives every "
        "algorithm the same partition and initialization; the 95% t-interval of the mean paired "
        "difference excludes 0). Otherwise the row is a tie, or, with one seed, not compared: "
        "see its comparison."
    ]
    for model, group in table.groupby("model", sort=False):
        display = pd.DataFrame({"partition": group["partition"].tolist()})
        for alg in algorithms:
            texts = []
            for _, row in group.iterrows():
                if not row[f"{alg} n"]:
                    texts.append(_MISSING)
                    continue
                parts = []
                for m in shown:
                    label = f"{alg} {METRICS[m][0]}"
                    interval = row[f"{label} 95% CI"]
                    parts.append(row[label] + (f" {interval}" if interval != _MISSING else ""))
                text = f"{' / '.join(parts)} (n={row[f'{alg} n']})"
                texts.append(f"**{text}**" if alg == row["best"] else text)
            display[alg] = texts
        display["comparison"] = group["comparison"].tolist()
        blocks.append(f"### model: {model}\n\n{to_markdown(display)}")
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------
# Partition heat maps (the metric plots are in `report_plots`).


def read_partition_counts(path: os.PathLike | str) -> pd.DataFrame:
    """A run's partition.csv as a clients x classes count table (the totals dropped)."""
    counts = pd.read_csv(path, index_col=0, dtype={0: str})
    counts.index = counts.index.astype(str)
    counts.columns = counts.columns.astype(str)
    return counts.drop(index="total", columns="total", errors="ignore")


def plot_partitions(
    sweep_dir: os.PathLike | str, order: dict[str, list], out_dir: os.PathLike | str
) -> tuple[list[pathlib.Path], list[str]]:
    """Client x class heat map per partition from its first seed's partition.csv; (files, notes)."""
    sweep_dir, out_dir = pathlib.Path(sweep_dir), pathlib.Path(out_dir)
    candidates: dict[str, list[tuple[int, pathlib.Path]]] = {}
    for out, record in _known_cells(sweep_dir):
        flags = fileio.read_json(out / "flags.json") or record
        if "partition" in flags and "seed" in flags:
            candidates.setdefault(flags["partition"], []).append((int(flags["seed"]), out))
    files, notes = [], []
    for part in order["partition"]:
        found = [
            (seed, out / "partition.csv")
            for seed, out in sorted(candidates.get(part, []), key=lambda c: c[0])
            if (out / "partition.csv").exists()
        ]
        if not found:
            notes.append(f"no partition.csv for {part}; skipped its heat map")
            continue
        seed, csv = found[0]
        path = out_dir / f"{sweep.name_component(part, partition=True)}.png"
        plots.plot_class_counts(read_partition_counts(csv), path, title=f"{part} (seed {seed})")
        files.append(path)
    return files, notes


# ---------------------------------------------------------------------------
# Everything.


def write_report(sweep_dir: os.PathLike | str, metric: str = "test_accuracy") -> Report:
    """Writes tables and plots of a sweep into ``<sweep_dir>/report/``.

    Raises:
        ReportError: For an unknown metric, a missing sweep directory, or no finished cell.
    """
    _check_metric(metric)
    sweep_dir = pathlib.Path(sweep_dir)
    frame, hospital_rows, notes = _load(sweep_dir)
    if frame.empty:
        raise ReportError(
            f"no finished cell (with summary.json) in {sweep_dir / sweep.CELLS_DIR}; "
            "run the sweep first: python -m experiments.sweep --sweep_dir=... --partitions=..."
        )
    order = grid_order(sweep_dir, frame)
    agg = aggregate(frame, order)
    table = results_table(agg, frame, metric)
    markdown = markdown_report(table, metric)
    out = sweep_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, value in (
        ("cells.csv", frame.to_csv(index=False)),
        ("aggregate.csv", agg.to_csv(index=False)),
        ("table.csv", table.to_csv(index=False)),
        ("table.md", markdown),
    ):
        fileio.write_text_atomic(out / name, value)
        files.append(out / name)
    short = _short(metric)
    for kind, stem, xlabel, log_x in (
        ("dirichlet", "alpha", "Dirichlet alpha", True),
        ("classes", "k", "classes per client k", False),
    ):
        path = out / f"{short}_vs_{stem}.png"
        if plot_vs_parameter(agg, kind, metric, path, xlabel, log_x) is None:
            notes.append(f"no finished {kind}: cells; skipped {path.name}")
            path.unlink(missing_ok=True)  # A stale plot from an earlier report would mislead.
        else:
            files.append(path)
    files.append(plot_algorithms(agg, metric, out / "algorithms.png"))
    path = out / f"{short}_vs_mb.png"
    if plot_vs_communication(agg, metric, path) is None:
        notes.append(f"no cell recorded its communication; skipped {path.name}")
        path.unlink(missing_ok=True)
    else:
        files.append(path)
    heat_maps, heat_notes = plot_partitions(sweep_dir, order, out / "partitions")
    files += heat_maps
    notes += heat_notes
    result = Report(frame, agg, table, markdown, files, notes)
    _write_hospitals(result, hospital_rows, order, out)
    return result


def _write_hospitals(
    result: Report, rows: pd.DataFrame, order: dict[str, list], out: pathlib.Path
) -> None:
    """hospitals.csv, hospital_verdicts.csv, hospitals.md and hospitals/*.png into `result`."""
    names = ["hospitals.csv", "hospital_verdicts.csv", "hospitals.md"]
    if rows.empty:  # No cell scored each hospital; a stale table from before would mislead.
        for name in names:
            (out / name).unlink(missing_ok=True)
        return
    result.hospitals = report_hospitals.aggregate(rows, order["algorithm"])
    result.hospital_verdicts = report_hospitals.verdicts(rows)
    result.hospitals_markdown = report_hospitals.markdown(
        result.hospitals, result.hospital_verdicts
    )
    texts = (
        result.hospitals.to_csv(index=False),
        result.hospital_verdicts.to_csv(index=False),
        result.hospitals_markdown,
    )
    for name, text in zip(names, texts):
        fileio.write_text_atomic(out / name, text)
        result.files.append(out / name)

    def stem(model: str, part: str) -> str:
        return f"{model}__{sweep.name_component(part, partition=True)}"

    result.files += report_hospitals.plot(result.hospitals, out / "hospitals", stem)


def describe_files(files: Sequence[pathlib.Path], root: pathlib.Path) -> str:
    """``wrote report/table.csv, ...`` relative to `root`."""
    names = []
    for path in files:
        try:
            names.append(str(path.relative_to(root)))
        except ValueError:
            names.append(str(path))
    return "wrote " + ", ".join(names)
