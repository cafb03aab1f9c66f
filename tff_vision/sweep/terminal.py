"""What a sweep prints: a line per cell with an ETA, the closing summary, the dry-run listing.

Durations, the ETA included, use the one format of `progress.format_duration`.
Every line is built here from the bookkeeping (`state`), so the runner only
decides when to print.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tff_vision.progress import format_duration
from tff_vision.sweep.grid import Cell
from tff_vision.sweep.state import STATUSES, Outcome, SweepState


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _metrics(summary: Mapping[str, Any] | None) -> str:
    fed = (summary or {}).get("federated") or {}
    return f"acc {_num(fed.get('test_accuracy'))} auc {_num(fed.get('test_auc'))}"


def cell_line(counter: int, total: int, cell: Cell, text: str) -> str:
    """``[cells 3/20] <name>: <text>``."""
    return f"[cells {counter}/{total}] {cell.name}: {text}"


def skipped_text(summary: Mapping[str, Any] | None) -> str:
    """What a cell done in an earlier run shows: its final metrics."""
    return f"skipped, done earlier ({_metrics(summary)})"


def attempt_text(
    record: Mapping[str, Any], seconds: float, summary: Mapping[str, Any] | None
) -> str:
    """How an attempt of `seconds` ended, from its sweep.json record: metrics or what went wrong."""
    duration = format_duration(seconds)
    status = record["status"]
    if status == "done":
        resumed = (summary or {}).get("resumed_from_round")
        resumed = f", resumed after round {resumed}" if resumed else ""
        return f"{_metrics(summary)} ({duration}{resumed})"
    if status == "partial":
        return f"interrupted after {duration}, left partial"
    return f"FAILED ({record.get('message', '')}) ({duration})"


def eta(
    durations: Sequence[float], remaining: int, elapsed: Sequence[float], max_parallel: int
) -> str:
    """Time left: mean cell time x cells left, less what running cells spent, / parallel.

    A running cell counts at most one mean cell time; "" before the first cell
    ends or once none is left.
    """
    if not durations or remaining <= 0:
        return ""
    mean = sum(durations) / len(durations)
    work = max(0.0, mean * remaining - sum(min(e, mean) for e in elapsed))
    return format_duration(work / min(max_parallel, remaining))


def summary_lines(
    state: SweepState, cells: Sequence[Cell], outcome: Outcome, seconds: float
) -> list[str]:
    """The closing lines of a sweep: counts, failures with their logs, what to do next."""
    counts = dict.fromkeys(STATUSES, 0)
    for cell in cells:
        counts[state.status(cell)] += 1
    word = "interrupted" if outcome.stopped else "finished"
    lines = [
        (
            f"sweep {word} after {format_duration(seconds)}: {len(cells)} cells: "
            f"{counts['done']} done ({len(outcome.skipped)} skipped), {counts['failed']} failed, "
            f"{counts['partial']} partial, {counts['pending']} pending"
        )
    ]
    failed = [c for c in cells if state.status(c) == "failed"]
    if failed:
        lines.append("failed cells:")
        for cell in failed:
            record = state.records.get(cell.name, {})
            lines.append(
                f"  {cell.name}: {record.get('message', '')} (log: {state.log_path(cell)})"
            )
    if outcome.stopped:
        lines.append(
            "rerun the same command to resume: done cells are skipped, partial ones resume"
        )
    elif outcome.exit_code == 1:
        lines.append("fix the cause and rerun the same command: only unfinished cells run again")
    lines.append(f"status: {state.path}")
    return lines


def describe(state: SweepState, cells: Sequence[Cell]) -> list[str]:
    """One line per cell (status and name, plus the failure message) for --dry_run."""
    lines = []
    for cell in cells:
        status = state.status(cell)
        line = f"{status:<8} {cell.name}"
        if status == "failed":
            line += f"  ({state.records.get(cell.name, {}).get('message', '')})"
        lines.append(line)
    return lines
