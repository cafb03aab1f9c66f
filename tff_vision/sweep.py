"""Grid sweeps over `experiments.run`: cells, names, commands, status bookkeeping, execution.

Design
------
A sweep is the product partitions x algorithms x models x seeds. Every other
setting (dataset, rounds, number of clients, ...) is a *fixed flag* shared by
all cells. A cell is one ordinary `python -m experiments.run` subprocess with
its own output directory, so its results, checkpoints and resume logic are
exactly those of a single run; the sweep only adds bookkeeping around it:

    <sweep_dir>/sweep.json          fixed flags, the grids run so far, one record per cell
                                    (status, exit code, last error line, duration, attempts)
    <sweep_dir>/cells/<name>/       the run's --output_dir, plus log.txt (the run's stdout
                                    and stderr, appended by every attempt)

Cell status comes from disk first, so it survives a killed sweep:

* ``done``: ``summary.json`` exists (the run writes it last, atomically);
* ``failed``: the last attempt recorded in sweep.json exited non-zero;
* ``partial``: the run started writing (``flags.json`` exists) or the last
  attempt was interrupted; rerunning resumes it from its round checkpoints;
* ``pending``: nothing yet.

A rerun of the sweep skips ``done`` cells and runs every other cell of its grid
again (``partial`` ones resume, ``failed`` ones are retried). The rerun may name
a different grid: its new cells are added to sweep.json and run, the cells of
earlier grids stay on record (and in the report); only the fixed flags must be
unchanged (except ``--data_dir``), because a done cell with other settings would
silently mix results.

Partition specs are canonicalised (``dirichlet:0.50`` -> ``dirichlet:0.5``).
``label_exclusion`` needs ``--exclude``: a fixed ``--exclude`` is used as is;
without one each label_exclusion cell gets the rotating exclusion
``exclude_per_client(num_clients, num_classes, 1)`` (client i lacks class
i mod num_classes, e.g. ``"0;1;2"``), passed to its run as ``--exclude``.

Execution: up to ``max_parallel`` cells run at once, each a subprocess started
from a thread of a `ThreadPoolExecutor`; sweep.json is rewritten atomically
after every cell. Each cell runs in its own process group, so a Ctrl-C in the
terminal reaches only the sweep, which forwards one SIGINT to every running
cell (the run checkpoints nothing half-written and exits 130), escalating to
SIGTERM and SIGKILL if a cell does not stop; a cell also gets SIGKILL should the
sweep itself die. Commands are argv lists, never shell strings, so values such
as ``dirichlet:0.1`` or ``1;2;3`` need no quoting.

This module imports no TensorFlow (the runs do, in their own processes).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tff_vision import partition as partition_lib

SWEPT_FLAGS = ("partition", "algorithm", "model", "seed", "output_dir")
STATUS_FILE = "sweep.json"
CELLS_DIR = "cells"
LOG_FILE = "log.txt"
STATUSES = ("done", "partial", "pending", "failed")
RUN_MODULE = "experiments.run"
PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

_FORMAT_VERSION = 1
# Fixed flags that do not change results: a rerun may differ in these.
_NON_RESULT_FLAGS = frozenset({"data_dir"})
# Characters kept as they are in a cell name component.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_PR_SET_PDEATHSIG = 1
# Escalation when stopping cells: signal, then seconds to wait for them to exit.
_STOP_STEPS = ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))
_INTERRUPTED_CODES = frozenset({130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL})


class SweepError(ValueError):
    """A sweep that cannot run; the message is one line naming the problem and the fix."""


# ---------------------------------------------------------------------------
# Cells and the grid.


def name_component(value: str, partition: bool = False) -> str:
    """A filesystem-safe, injective rendering of one cell-name component.

    Values made of ``[A-Za-z0-9._+-]`` stay as they are; any other value gets
    its unsafe characters replaced by ``-`` and a short hash of the original
    appended, so distinct values never collide. For a canonical partition spec
    the ``:`` becomes ``-`` (``dirichlet:0.5`` -> ``dirichlet-0.5``), which is
    still injective because no spec name contains ``-``.
    """
    text = value.replace(":", "-", 1) if partition else value
    if _UNSAFE.search(text) or not text:
        digest = hashlib.sha1(value.encode()).hexdigest()[:8]
        text = f"{_UNSAFE.sub('-', text)}-{digest}"
    return text


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes:
        partition: Canonical partition spec, e.g. ``dirichlet:0.5``.
        algorithm: Federated algorithm name (passed through to the run).
        model: Model name (passed through to the run).
        seed: Seed of the run.
        flags: ``(name, value)`` pairs of every other flag of the run, sorted by
            name: the sweep's fixed flags plus, for label_exclusion without a
            fixed ``--exclude``, the derived ``exclude``.
    """

    partition: str
    algorithm: str
    model: str
    seed: int
    flags: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """Stable, unique, filesystem-safe name (no ':', ';' or '/').

        Example: ``partition=dirichlet-0.5__algorithm=fedavg__model=cnn__seed=0``.
        The fixed flags are not part of it: they are the same for every cell.
        """
        return "__".join(
            f"{key}={name_component(str(value), partition=key == 'partition')}"
            for key, value in (
                ("partition", self.partition),
                ("algorithm", self.algorithm),
                ("model", self.model),
                ("seed", self.seed),
            )
        )

    def output_dir(self, sweep_dir: os.PathLike | str) -> pathlib.Path:
        """The run's ``--output_dir``: ``<sweep_dir>/cells/<name>``."""
        return pathlib.Path(sweep_dir) / CELLS_DIR / self.name

    def command(self, sweep_dir: os.PathLike | str, python: str = sys.executable) -> list[str]:
        """The argv of this cell's run (no shell involved, so no quoting)."""
        argv = [python, "-m", RUN_MODULE]
        argv += [
            f"--partition={self.partition}",
            f"--algorithm={self.algorithm}",
            f"--model={self.model}",
            f"--seed={self.seed}",
        ]
        argv += [f"--{name}={value}" for name, value in self.flags]
        argv.append(f"--output_dir={self.output_dir(sweep_dir)}")
        return argv

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partition": self.partition,
            "algorithm": self.algorithm,
            "model": self.model,
            "seed": self.seed,
            "flags": dict(self.flags),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Cell:
        return cls(
            partition=str(value["partition"]),
            algorithm=str(value["algorithm"]),
            model=str(value["model"]),
            seed=int(value["seed"]),
            flags=tuple(sorted((str(k), str(v)) for k, v in dict(value.get("flags", {})).items())),
        )


def canonical_partition(spec: str) -> str:
    """The canonical form of a partition spec (``'Dirichlet: 0.50'`` -> ``'dirichlet:0.5'``).

    Raises:
        SweepError: For an invalid spec (the message lists the valid forms).
    """
    try:
        name, param = partition_lib.parse_spec(spec)
    except partition_lib.PartitionError as e:
        raise SweepError(f"--partitions: {e}") from None
    if param is None:
        return name
    return f"{name}:{param:g}" if isinstance(param, float) else f"{name}:{param}"


def _unique(values: Sequence[str], flag: str) -> list[str]:
    out = []
    for value in values:
        value = str(value).strip()
        if not value:
            raise SweepError(f"--{flag} has an empty entry; remove the stray ','")
        if value not in out:
            out.append(value)
    if not out:
        raise SweepError(f"--{flag} is empty, so the grid has no cells; give at least one value")
    return out


def parse_seeds(seeds: Sequence[str | int]) -> list[int]:
    """Seeds as non-negative ints, duplicates dropped, order kept."""
    out = []
    for text in _unique([str(s) for s in seeds], "seeds"):
        try:
            seed = int(text)
        except ValueError:
            raise SweepError(
                f"--seeds entry {text!r} is not an integer; pass e.g. --seeds=0,1,2"
            ) from None
        if seed < 0:
            raise SweepError(f"--seeds entry {seed} is negative; seeds must be >= 0")
        if seed not in out:
            out.append(seed)
    return out


def derived_exclude(fixed_flags: Mapping[str, str]) -> str:
    """Rotating one-class exclusion for label_exclusion cells without a fixed ``--exclude``.

    Uses ``partition.exclude_per_client(num_clients, num_classes, 1)``: client i
    lacks class ``i % num_classes``. ``num_clients`` and the dataset come from
    the fixed flags or the run's defaults; the class count from the MedMNIST
    INFO table (no data is loaded).
    """
    from tff_vision import config  # pylint: disable=g-import-not-at-top
    from tff_vision import data as data_lib  # pylint: disable=g-import-not-at-top

    defaults = config.ExperimentConfig()
    dataset = fixed_flags.get("dataset", defaults.dataset)
    text = fixed_flags.get("num_clients", str(defaults.num_clients))
    try:
        num_clients = int(text)
    except ValueError:
        raise SweepError(
            f"--num_clients={text!r} is not an integer; pass e.g. --num_clients=3"
        ) from None
    try:
        num_classes = len(data_lib.dataset_info(dataset)["label"])
        excluded = partition_lib.exclude_per_client(num_clients, num_classes, 1)
    except (data_lib.DataError, partition_lib.PartitionError) as e:
        raise SweepError(f"cannot derive label_exclusion's --exclude: {e}") from None
    return ";".join(",".join(str(c) for c in group) for group in excluded)


def expand_grid(
    partitions: Sequence[str],
    algorithms: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[str | int],
    fixed_flags: Mapping[str, str],
) -> list[Cell]:
    """All cells of a grid, validated before anything runs.

    Cells are ordered seed-major (all cells of the first seed, then the next),
    so an early report already covers the whole grid; within a seed the order
    is partitions, then algorithms, then models, as given. Duplicates (after
    canonicalising partition specs) are dropped.

    Args:
        partitions: Partition specs (see `tff_vision.partition.parse_spec`).
        algorithms: Algorithm names, passed through (an unknown one fails its cells).
        models: Model names, passed through.
        seeds: Non-negative integer seeds.
        fixed_flags: Every other run flag, name (without ``--``) -> value text.

    Raises:
        SweepError: For an invalid partition spec, seed, an empty axis, or a
            swept flag among ``fixed_flags``.
    """
    fixed = {str(k).lstrip("-"): str(v) for k, v in fixed_flags.items()}
    for name in SWEPT_FLAGS:
        if name in fixed:
            fix = "--sweep_dir" if name == "output_dir" else f"--{name}s (comma-separated)"
            raise SweepError(f"--{name} is set per cell by the sweep; use {fix} instead")
    specs = list(dict.fromkeys(canonical_partition(p) for p in _unique(partitions, "partitions")))
    algorithms = _unique(algorithms, "algorithms")
    models = _unique(models, "models")
    seed_list = parse_seeds(seeds)
    base = tuple(sorted(fixed.items()))
    exclusion = None
    if "label_exclusion" in specs and not fixed.get("exclude", "").strip():
        exclusion = tuple(sorted({**fixed, "exclude": derived_exclude(fixed)}.items()))
    cells = []
    for seed, spec, algorithm, model in itertools.product(seed_list, specs, algorithms, models):
        cell_flags = exclusion if spec == "label_exclusion" and exclusion else base
        cells.append(Cell(spec, algorithm, model, seed, cell_flags))
    return cells


# ---------------------------------------------------------------------------
# Status bookkeeping (sweep.json).


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json_atomic(path: os.PathLike | str, value: Any) -> None:
    """Writes `value` as JSON via a temporary file in the same directory and a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: os.PathLike | str) -> dict[str, Any] | None:
    """The JSON object at `path`, or None if it is missing or unreadable."""
    try:
        value = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
        data = read_json(path)
        if data is None or not isinstance(data.get("cells", []), list):
            raise SweepError(
                f"{path} is unreadable; restore it, delete it (cells' results stay) "
                "or use a new --sweep_dir"
            )
        return cls(sweep_dir, data)

    def cells(self) -> list[Cell]:
        """Every recorded cell, in the order they were first added."""
        return [Cell.from_dict(r) for r in self.records.values()]

    def status(self, cell: Cell) -> str:
        return disk_status(cell, self.sweep_dir, self.records.get(cell.name))

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
            self.grids.append({"grid": dict(grid), "cells": len(cells), "added": _now()})
        self.exists = True
        return change

    def update(self, cell: Cell, **fields: Any) -> None:
        record = self.records.setdefault(cell.name, {**cell.to_dict(), "attempts": 0})
        record.update(fields, updated=_now())

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
            "updated": _now(),
            "fixed_flags": self.fixed_flags,
            "grids": self.grids,
            "counts": counts,
            "cells": cells,
        }

    def save(self) -> None:
        write_json_atomic(self.path, self.to_dict())


@contextlib.contextmanager
def lock_sweep_dir(sweep_dir: os.PathLike | str) -> Iterator[None]:
    """Holds an exclusive lock on the sweep dir; `SweepError` if another sweep has it."""
    import fcntl  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(sweep_dir) / ".sweep.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "?"
            raise SweepError(
                f"another sweep (pid {owner}) is running in --sweep_dir={sweep_dir}; "
                "wait for it to end or use another --sweep_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# Execution.


def format_duration(seconds: float) -> str:
    """``41 s``, ``3m05s``, ``1h02m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_eta(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


@dataclasses.dataclass
class CellResult:
    """What one attempt at a cell ended with (`returncode` None: it never started)."""

    cell: Cell
    returncode: int | None
    seconds: float = 0.0
    last_line: str = ""
    pid: int | None = None


@dataclasses.dataclass
class Outcome:
    """The end of `Runner.run`: exit status and cell names by how they ended."""

    exit_code: int
    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    interrupted: list[str] = dataclasses.field(default_factory=list)


_LIBC: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            return None
    return _LIBC


def _die_with_sweep() -> None:  # Runs in the child between fork and exec.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _raise_interrupt(signum, frame) -> None:  # pylint: disable=unused-argument
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Runner:
    """Runs the cells of one grid, records them in sweep.json, prints one line per cell."""

    def __init__(
        self,
        state: SweepState,
        cells: Sequence[Cell],
        max_parallel: int = 1,
        printer: Callable[[str], None] = print,
        error_printer: Callable[[str], None] | None = None,
        python: str = sys.executable,
        stop_steps: Sequence[tuple[int, float]] = _STOP_STEPS,
    ):
        if max_parallel < 1:
            raise SweepError(f"--max_parallel must be >= 1, got {max_parallel}")
        self.state = state
        self.cells = list(cells)
        self.max_parallel = max_parallel
        self.printer = printer
        self.error_printer = error_printer or (
            lambda line: print(line, file=sys.stderr, flush=True)
        )
        self.python = python
        self.stop_steps = tuple(stop_steps)
        self._lock = threading.Lock()
        self._stopping = False
        self._running: dict[str, subprocess.Popen] = {}
        self._started: dict[str, float] = {}
        self._recorded: set[str] = set()
        self._durations: list[float] = []
        self._counter = 0
        self._remaining = 0
        self._outcome = Outcome(exit_code=0)

    def running_pids(self) -> list[int]:
        """Process ids of the cells running now."""
        with self._lock:
            return [proc.pid for proc in self._running.values()]

    # -- one cell, in a pool thread --

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"  # log.txt follows the run live.
        return env

    def _run_cell(self, cell: Cell) -> CellResult:
        command = cell.command(self.state.sweep_dir, self.python)
        out = cell.output_dir(self.state.sweep_dir)
        with self._lock:
            if self._stopping:
                return CellResult(cell, None)
            try:
                out.mkdir(parents=True, exist_ok=True)
                # Closed by this thread once the cell ends (below), hence no `with`.
                log = open(out / LOG_FILE, "ab", buffering=0)  # noqa: SIM115
            except OSError as e:
                return CellResult(cell, 126, 0.0, f"cannot write {out / LOG_FILE}: {e}")
            log.write(f"\n=== {_now()} attempt: {shlex.join(command)}\n".encode())
            start = time.monotonic()
            try:
                proc = subprocess.Popen(  # pylint: disable=consider-using-with
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.PIPE,
                    env=self._env(),
                    close_fds=True,
                    process_group=0,  # Ctrl-C in the terminal reaches only the sweep.
                    # Only an already-loaded prctl runs between fork and exec: no locks.
                    preexec_fn=_die_with_sweep if _load_libc() else None,  # noqa: PLW1509
                )
            except OSError as e:
                log.close()
                return CellResult(cell, 127, 0.0, f"cannot start {command[0]}: {e}")
            self._running[cell.name] = proc
            self._started[cell.name] = start
        last_line = last_error = ""
        try:
            assert proc.stderr is not None
            for raw in proc.stderr:
                log.write(raw)
                line = raw.decode(errors="replace").strip()
                if line:
                    last_line = line
                    if line.startswith("error: "):
                        last_error = line
            returncode = proc.wait()
        finally:
            with self._lock:
                self._running.pop(cell.name, None)
                self._started.pop(cell.name, None)
            log.write(f"=== exit status {proc.poll()}\n".encode())
            log.close()
        return CellResult(
            cell, returncode, time.monotonic() - start, last_error or last_line, proc.pid
        )

    # -- bookkeeping, in the main thread --

    def _line(self, cell: Cell, text: str) -> str:
        self._counter += 1
        return f"[cells {self._counter}/{len(self.cells)}] {cell.name}: {text}"

    def _finish(self, result: CellResult, interrupted: bool = False) -> None:
        cell = result.cell
        if cell.name in self._recorded or result.returncode is None:
            return
        self._remaining -= 1
        summary = read_json(cell.output_dir(self.state.sweep_dir) / "summary.json")
        fields: dict[str, Any] = {
            "exit_code": result.returncode,
            "seconds": round(result.seconds, 1),
            "pid": result.pid,
            "attempts": int(self.state.records.get(cell.name, {}).get("attempts", 0)) + 1,
            "log": str(cell.output_dir(self.state.sweep_dir) / LOG_FILE),
        }
        duration = format_duration(result.seconds)
        if result.returncode == 0 and summary is not None:
            fed = summary.get("federated") or {}
            acc, auc = fed.get("test_accuracy"), fed.get("test_auc")
            fields.update(status="done", message="", test_accuracy=acc, test_auc=auc)
            resumed = summary.get("resumed_from_round")
            resumed = f", resumed after round {resumed}" if resumed else ""
            text = f"acc {_num(acc)} auc {_num(auc)} ({duration}{resumed})"
            self._durations.append(result.seconds)
            self._outcome.ran.append(cell.name)
        elif interrupted and result.returncode in _INTERRUPTED_CODES:
            fields.update(status="partial", message="interrupted")
            text = f"interrupted after {duration}, left partial"
            self._outcome.interrupted.append(cell.name)
        else:
            if result.returncode == 0:
                message = "exited 0 without writing summary.json"
            elif result.returncode < 0:
                try:
                    message = f"killed by {signal.Signals(-result.returncode).name}"
                except ValueError:
                    message = f"killed by signal {-result.returncode}"
            else:
                message = f"exit {result.returncode}"
            if result.last_line:
                message += f": {result.last_line}"
            fields.update(status="failed", message=message)
            text = f"FAILED ({message}) ({duration})"
            self._durations.append(result.seconds)
            self._outcome.failed.append(cell.name)
        self.state.update(cell, **fields)
        self.state.save()
        self._recorded.add(cell.name)
        eta = "" if interrupted else self._eta()
        self.printer(self._line(cell, text) + (f"  ETA {eta}" if eta else ""))

    def _eta(self) -> str:
        """Mean cell time x cells left, less the time running cells already spent, / parallel."""
        if not self._durations or self._remaining <= 0:
            return ""
        mean = sum(self._durations) / len(self._durations)
        now = time.monotonic()
        with self._lock:
            spent = sum(min(now - t, mean) for t in self._started.values())
        work = max(0.0, mean * self._remaining - spent)
        return _format_eta(work / min(self.max_parallel, self._remaining))

    def _stop_running(self, futures: Sequence[concurrent.futures.Future]) -> None:
        """Stops every running cell: SIGINT, then SIGTERM, then SIGKILL, waiting in between."""
        with self._lock:
            self._stopping = True
            running = dict(self._running)
        for future in futures:
            future.cancel()  # Cells not started yet never will be.
        if running:
            self.error_printer(
                f"interrupted: stopping {len(running)} running cell(s) "
                "(they keep their checkpoints; Ctrl-C again to stop them faster)"
            )
        for signum, grace in self.stop_steps:
            alive = [p for p in running.values() if p.poll() is None]
            if not alive:
                break
            for proc in alive:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)
            deadline = time.monotonic() + grace
            try:
                while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                    time.sleep(0.1)
            except KeyboardInterrupt:
                continue  # Next, harder signal right away.
        try:
            for proc in running.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            # The pool threads only drain the cells' stderr pipes now.
            concurrent.futures.wait(futures, timeout=30)
        except KeyboardInterrupt:
            pass

    def run(self) -> Outcome:
        """Runs every cell that is not done; returns the outcome (exit code 0, 1 or 130)."""
        todo = []
        for cell in self.cells:
            if self.state.status(cell) == "done":
                record = self.state.records.get(cell.name, {})
                summary = read_json(cell.output_dir(self.state.sweep_dir) / "summary.json") or {}
                fed = summary.get("federated") or {}
                self.printer(
                    self._line(
                        cell,
                        f"skipped, done earlier (acc {_num(fed.get('test_accuracy'))} "
                        f"auc {_num(fed.get('test_auc'))})",
                    )
                )
                self._outcome.skipped.append(cell.name)
                if record.get("status") != "done":
                    self.state.update(cell, status="done")
            else:
                todo.append(cell)
        self.state.save()
        self._remaining = len(todo)
        futures: dict[concurrent.futures.Future, Cell] = {}
        interrupted = False
        if todo:
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=min(self.max_parallel, len(todo)), thread_name_prefix="sweep-cell"
            )
            with _signals_interrupt():
                try:
                    for cell in todo:
                        futures[pool.submit(self._run_cell, cell)] = cell
                    pending = set(futures)
                    while pending:
                        finished, pending = concurrent.futures.wait(
                            pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                        for future in finished:
                            self._finish(future.result())
                except BaseException as e:  # Ctrl-C, SIGTERM, or a bug: no cell outlives us.
                    self._stop_running(list(futures))
                    if not isinstance(e, KeyboardInterrupt):
                        raise
                    interrupted = True
                    for future in futures:
                        if future.done() and not future.cancelled() and not future.exception():
                            self._finish(future.result(), interrupted=True)
                    self.state.save()
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
        outcome = self._outcome
        outcome.exit_code = 130 if interrupted else (1 if outcome.failed else 0)
        return outcome


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def summary_lines(
    state: SweepState, cells: Sequence[Cell], outcome: Outcome, seconds: float
) -> list[str]:
    """The closing lines of a sweep: counts, failures with their logs, what to do next."""
    counts = dict.fromkeys(STATUSES, 0)
    for cell in cells:
        counts[state.status(cell)] += 1
    word = "interrupted" if outcome.exit_code == 130 else "finished"
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
                f"  {cell.name}: {record.get('message', '')} "
                f"(log: {cell.output_dir(state.sweep_dir) / LOG_FILE})"
            )
    if outcome.exit_code == 130:
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
