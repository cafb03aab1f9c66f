"""Grid sweeps over `experiments.run`: cells, their bookkeeping in sweep.json, their execution.

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
Commands are argv lists, never shell strings, so values such as
``dirichlet:0.1`` or ``1;2;3`` need no quoting.

Modules, each one job:

    grid      the cells of a grid: names, commands, validation
    state     sweep.json: cell status, attempts and their tally, the lock
    process   the cells' subprocesses: started with their log, stopped in order
    hosts     resident cell hosts: long-lived processes that run cells one after another
              (both ends of their pipe; `experiments.cell_host` is the host)
    launchers where cells run: `LocalLauncher` (subprocesses here: a fresh run per cell, or
              resident cell hosts), `RayLauncher` (Ray tasks that run the same
              subprocesses on a cluster's nodes)
    runner    `Runner`: schedules the cells through a launcher, records and prints each
    terminal  the lines printed: per cell with ETA, the summary, the dry-run listing

This package imports no TensorFlow (the runs do, in their own processes), and
Ray only once a `RayLauncher` is made.

With resident cell hosts (`LocalLauncher(cell_processes="resident")`,
`experiments.sweep`'s default) a cell is the same run inside a long-lived host
process that runs cells one after another, each with a fresh TFF context and
exactly the results of the subprocess; see `hosts`.
"""

from tff_vision.sweep.grid import (
    CELLS_DIR,
    RUN_MODULE,
    SWEPT_FLAGS,
    Cell,
    SweepError,
    canonical_partition,
    derived_exclude,
    expand_grid,
    grid_axes,
    name_component,
    parse_seeds,
)
from tff_vision.sweep.hosts import CELLS_PER_HOST, HOST_MODULE, CellHosts
from tff_vision.sweep.launchers import CELL_PROCESSES, Launcher, LocalLauncher, RayLauncher
from tff_vision.sweep.process import PROJECT_ROOT, STOP_STEPS, CellProcesses
from tff_vision.sweep.runner import Runner
from tff_vision.sweep.state import (
    LOG_FILE,
    STATUS_FILE,
    STATUSES,
    CellResult,
    GridChange,
    Outcome,
    SweepState,
    attempt_status,
    disk_status,
    lock_sweep_dir,
)
from tff_vision.sweep.terminal import describe, summary_lines

__all__ = [
    "CELLS_DIR",
    "CELLS_PER_HOST",
    "CELL_PROCESSES",
    "HOST_MODULE",
    "LOG_FILE",
    "PROJECT_ROOT",
    "RUN_MODULE",
    "STATUSES",
    "STATUS_FILE",
    "STOP_STEPS",
    "SWEPT_FLAGS",
    "Cell",
    "CellHosts",
    "CellProcesses",
    "CellResult",
    "GridChange",
    "Launcher",
    "LocalLauncher",
    "Outcome",
    "RayLauncher",
    "Runner",
    "SweepError",
    "SweepState",
    "attempt_status",
    "canonical_partition",
    "derived_exclude",
    "describe",
    "disk_status",
    "expand_grid",
    "grid_axes",
    "lock_sweep_dir",
    "name_component",
    "parse_seeds",
    "summary_lines",
]
