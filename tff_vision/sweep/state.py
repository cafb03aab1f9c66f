"""The bookkeeping of a sweep: ``<sweep_dir>/sweep.json``, cell status, attempts and their tally.

A cell's status comes from disk first (``summary.json`` means done, whatever
sweep.json says), so it survives a killed sweep; sweep.json adds what disk
cannot say (an attempt failed or was interrupted) and the fixed flags and grids
run so far. Every save rewrites sweep.json atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import signal
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tff_vision import dirlock, fileio
from tff_vision.sweep.grid import Cell, SweepError

STATUS_FILE = "sweep.json"
LOG_FILE = "log.txt"
LOCK_FILE = ".sweep.lock"
STATUSES = ("done", "partial", "pending", "failed")

_FORMAT_VERSION = 1
# Fixed flags that do not change results: a rerun may differ in these.
_NON_RESULT_FLAGS = frozenset({"data_dir"})
# Exit codes of a run the sweep stopped (SIGINT, SIGTERM: 130, 143 after its last checkpoint).
_INTERRUPTED_CODES = frozenset(
    {130, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL}
)


def timestamp() -> str:
    """Now, local time with its offset, to the second (sweep.json and log headers)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def disk_status(cell: Cell, sweep_dir: os.PathLike | str, record: Mapping | None = None) -> str:
    """Status of a cell from its output directory and its sweep.json record (if any)."""
    out = cell.output_dir(sweep_dir)
    if (out / "summary.json").exists():
        return "done"
    recorded = (record or {}).get("status")
    if recorded == "failed":
        return "failed"
    if recorded == "partial" or (out / "flags.json").exists():
        return "partial"
    return "pending"


@dataclasses.dataclass
class CellResult:
    """What one attempt at a cell ended with (`returncode` None: it never started).

    `lost` says why the launcher lost a started attempt whose exit status it
    cannot know (e.g. its Ray node died); `returncode` is None then.
    """

    cell: Cell
    returncode: int | None
    seconds: float = 0.0
    last_line: str = ""
    pid: int | None = None
    lost: str = ""


@dataclasses.dataclass
class Outcome:
    """The end of `Runner.run`: exit status and cell names by how they ended."""

    exit_code: int
    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    interrupted: list[str] = dataclasses.field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """Whether a signal stopped the sweep (exit code 128 + the signal)."""
        return self.exit_code >= 128

    def add(self, status: str, name: str) -> None:
        """Counts an attempt that ended with `status` (done, failed or partial)."""
        {"done": self.ran, "failed": self.failed, "partial": self.interrupted}[status].append(name)


def attempt_status(result: CellResult, finished: bool, interrupted: bool) -> tuple[str, str]:
    """(status, message) of an attempt; `finished`: it wrote summary.json.

    An attempt the sweep stopped is partial (it resumes from its checkpoints);
    anything else without a summary failed, with the exit or signal and the
    run's last error line as the message, or why the launcher lost it.
    """
    code = result.returncode
    if finished and (code == 0 or result.lost):  # summary.json is written last.
        return "done", ""
    if result.lost:
        return ("partial", "interrupted") if interrupted else ("failed", result.lost)
    if interrupted and code in _INTERRUPTED_CODES:
        return "partial", "interrupted"
    if code == 0:
        message = "exited 0 without writing summary.json"
    elif code < 0:
        try:
            message = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            message = f"killed by signal {-code}"
    else:
        message = f"exit {code}"
    if result.last_line:
        message += f": {result.last_line}"
    return "failed", message


@dataclasses.dataclass
class GridChange:
    """How a grid relates to the cells already recorded in sweep.json."""

    added: list[str]
    kept: list[str]
    first: bool

    def describe(self) -> str | None:
        """One line for the terminal, or None if the grid is unchanged."""
        if self.first or (not self.added and not self.kept):
            return None
        parts = []
        if self.added:
            parts.append(f"{len(self.added)} new cell(s) added")
        if self.kept:
            parts.append(
                f"{len(self.kept)} cell(s) of earlier grids not in this one are kept "
                "(not run, still reported)"
            )
        return "grid changed since the last run: " + "; ".join(parts)


class SweepState:
    """The contents of ``<sweep_dir>/sweep.json``: fixed flags, grids, per-cell records."""

    def __init__(self, sweep_dir: os.PathLike | str, data: dict[str, Any] | None = None):
        self.sweep_dir = pathlib.Path(sweep_dir)
        data = data or {}
        self.fixed_flags: dict[str, str] = dict(data.get("fixed_flags") or {})
        self.grids: list[dict[str, Any]] = list(data.get("grids") or [])
        self.records: dict[str, dict[str, Any]] = {
            r["name"]: dict(r) for r in data.get("cells") or [] if "name" in r
        }
        self.exists = bool(data)

    @property
    def path(self) -> pathlib.Path:
        return self.sweep_dir / STATUS_FILE

    @classmethod
    def load(cls, sweep_dir: os.PathLike | str) -> SweepState:
        """The recorded state, or an empty one if there is no sweep.json yet."""
        path = pathlib.Path(sweep_dir) / STATUS_FILE
        if not path.exists():
            return cls(sweep_dir)
        data = fileio.read_json(path)
        if data is None or not isinstance(data.get("cells", []), list):
            raise SweepError(
                f"{path} is unreadable; restore it, delete it (cells' results stay) "
                "or use a new --sweep_dir"
            )
        return cls(sweep_dir, data)

    def copy(self) -> SweepState:
        """An independent copy (e.g. to merge a grid into without changing this state)."""
        return SweepState(self.sweep_dir, self.to_dict() if self.exists else None)

    def cells(self) -> list[Cell]:
        """Every recorded cell, in the order they were first added."""
        return [Cell.from_dict(r) for r in self.records.values()]

    def status(self, cell: Cell) -> str:
        return disk_status(cell, self.sweep_dir, self.records.get(cell.name))

    def log_path(self, cell: Cell) -> pathlib.Path:
        """The cell's log.txt: the run's stdout and stderr, appended by every attempt."""
        return cell.output_dir(self.sweep_dir) / LOG_FILE

    def summary(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's summary.json (written last by its run), or None."""
        return fileio.read_json(cell.output_dir(self.sweep_dir) / "summary.json")

    def check_fixed_flags(self, fixed_flags: Mapping[str, str]) -> None:
        """Raises `SweepError` if result-changing fixed flags differ from the recorded ones."""
        if not self.exists:
            return
        old, new = self.fixed_flags, dict(fixed_flags)
        diff = sorted(
            k
            for k in set(old) | set(new)
            if k not in _NON_RESULT_FLAGS and old.get(k) != new.get(k)
        )
        if diff:
            shown = ", ".join(f"--{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
            raise SweepError(
                f"--sweep_dir={self.sweep_dir} holds a sweep with other fixed flags ({shown}); "
                "rerun with the same flags, or use a new --sweep_dir"
            )

    def merge(
        self, grid: Mapping[str, Any], cells: Sequence[Cell], fixed_flags: Mapping[str, str]
    ) -> GridChange:
        """Adds the grid and its new cells (in memory; call `save`)."""
        names = [c.name for c in cells]
        change = GridChange(
            added=[n for n in names if n not in self.records] if self.exists else names,
            kept=[n for n in self.records if n not in set(names)],
            first=not self.exists,
        )
        for cell in cells:
            old = self.records.get(cell.name, {"status": "pending", "attempts": 0})
            self.records[cell.name] = {**old, **cell.to_dict()}
        self.fixed_flags = dict(fixed_flags)
        if not self.grids or self.grids[-1].get("grid") != dict(grid):
            self.grids.append({"grid": dict(grid), "cells": len(cells), "added": timestamp()})
        self.exists = True
        return change

    def update(self, cell: Cell, **fields: Any) -> None:
        record = self.records.setdefault(cell.name, {**cell.to_dict(), "attempts": 0})
        record.update(fields, updated=timestamp())

    def record_attempt(self, result: CellResult, interrupted: bool = False) -> dict[str, Any]:
        """Records how an attempt ended (status, exit code, message, metrics); returns the record.

        Saves nothing: the caller saves once the terminal line is out.
        """
        cell = result.cell
        summary = self.summary(cell)
        status, message = attempt_status(result, summary is not None, interrupted)
        fields: dict[str, Any] = {
            "exit_code": result.returncode,
            "seconds": round(result.seconds, 1),
            "pid": result.pid,
            "attempts": int(self.records.get(cell.name, {}).get("attempts", 0)) + 1,
            "log": str(self.log_path(cell)),
            "status": status,
            "message": message,
        }
        if status == "done":
            fed = (summary or {}).get("federated") or {}
            fields.update(test_accuracy=fed.get("test_accuracy"), test_auc=fed.get("test_auc"))
        self.update(cell, **fields)
        return self.records[cell.name]

    def to_dict(self) -> dict[str, Any]:
        cells = []
        counts = dict.fromkeys(STATUSES, 0)
        for record in self.records.values():
            cell = Cell.from_dict(record)
            # Cell fields first, then the status and the last attempt's details.
            record = {**cell.to_dict(), "status": self.status(cell), **record}
            record["status"] = self.status(cell)
            counts[record["status"]] += 1
            cells.append(record)
        return {
            "version": _FORMAT_VERSION,
            "updated": timestamp(),
            "fixed_flags": self.fixed_flags,
            "grids": self.grids,
            "counts": counts,
            "cells": cells,
        }

    def save(self) -> None:
        fileio.write_json_atomic(self.path, self.to_dict())


@contextlib.contextmanager
def lock_sweep_dir(sweep_dir: os.PathLike | str) -> Iterator[None]:
    """Holds the sweep dir's lock (`dirlock`); `SweepError` if another sweep has it."""
    try:
        lock = dirlock.DirectoryLock(sweep_dir, LOCK_FILE)
    except dirlock.DirectoryLocked as e:
        raise SweepError(
            f"another sweep (pid {e.pid}) is running in --sweep_dir={sweep_dir}; "
            "wait for it to end or use another --sweep_dir"
        ) from None
    with lock:
        yield
