"""Runs the cells of a grid through a launcher, recording and printing each.

The runner schedules; the pieces around it do the rest: a launcher
(`launchers`: subprocesses here, ``max_parallel`` at once, or Ray tasks on a
cluster) runs and stops the cells, `SweepState` records every attempt
(sweep.json is rewritten after each cell) and `terminal` words the lines. All
bookkeeping stays in the calling thread, which polls the launcher's futures:
sweep.json has one writer. A Ctrl-C, SIGTERM or SIGHUP (or a bug) stops every
running cell before `run` returns or raises.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable, Sequence

from tff_vision import interrupts
from tff_vision.sweep import terminal
from tff_vision.sweep.grid import Cell
from tff_vision.sweep.launchers import Launcher, LocalLauncher
from tff_vision.sweep.process import STOP_STEPS
from tff_vision.sweep.state import CellResult, Outcome, SweepState


def _print_error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Runner:
    """Runs the cells of one grid, records them in sweep.json, prints one line per cell.

    `launcher` runs the cells (closed when `run` ends); without one, a
    `LocalLauncher` of `max_parallel` subprocesses of `python`.
    """

    def __init__(
        self,
        state: SweepState,
        cells: Sequence[Cell],
        max_parallel: int = 1,
        printer: Callable[[str], None] = print,
        error_printer: Callable[[str], None] | None = None,
        python: str = sys.executable,
        stop_steps: Sequence[tuple[int, float]] = STOP_STEPS,
        launcher: Launcher | None = None,
    ):
        self.launcher = launcher or LocalLauncher(
            state.sweep_dir, python=python, max_parallel=max_parallel
        )
        self.state = state
        self.cells = list(cells)
        self.printer = printer
        self.error_printer = error_printer or _print_error
        self.python = python
        self.stop_steps = tuple(stop_steps)
        self._recorded: set[str] = set()
        self._durations: list[float] = []
        self._counter = 0
        self._remaining = 0
        self._outcome = Outcome(exit_code=0)

    def running_pids(self) -> list[int]:
        """Process ids of the cells running now."""
        return self.launcher.pids()

    def run(self) -> Outcome:
        """Runs every cell that is not done; returns the outcome.

        Its exit code: 0, 1 (a cell failed), or 128 + the signal that stopped
        the sweep (130 on Ctrl-C, 143 on SIGTERM), as `experiments.run`'s.
        """
        try:
            todo = self._skip_done()
            self._remaining = len(todo)
            interrupted = self._run_all(todo) if todo else False
        finally:
            self.launcher.close()
        outcome = self._outcome
        if interrupted:
            outcome.exit_code = 128 + interrupts.stop_signal()
        else:
            outcome.exit_code = 1 if outcome.failed else 0
        return outcome

    def _print_cell(self, cell: Cell, text: str) -> None:
        self._counter += 1
        self.printer(terminal.cell_line(self._counter, len(self.cells), cell, text))

    def _skip_done(self) -> list[Cell]:
        """Reports the cells done earlier (marking them done in sweep.json); returns the rest."""
        todo = []
        for cell in self.cells:
            if self.state.status(cell) != "done":
                todo.append(cell)
                continue
            self._print_cell(cell, terminal.skipped_text(self.state.summary(cell)))
            self._outcome.skipped.append(cell.name)
            if self.state.records.get(cell.name, {}).get("status") != "done":
                self.state.update(cell, status="done")
        self.state.save()
        return todo

    def _run_all(self, todo: Sequence[Cell]) -> bool:
        """Runs `todo` through the launcher, recording each cell as it ends; True if interrupted."""
        futures: list[concurrent.futures.Future] = []
        with interrupts.signals_interrupt():
            try:
                futures += [self.launcher.submit(cell) for cell in todo]
                pending = set(futures)
                while pending:
                    finished, pending = concurrent.futures.wait(
                        pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in sorted(finished, key=futures.index):  # In grid order.
                        self._finish(future.result())
            except BaseException as e:  # Ctrl-C, SIGTERM, or a bug: no cell outlives us.
                self.launcher.stop(futures, self.stop_steps, self.error_printer)
                if not isinstance(e, KeyboardInterrupt):
                    raise
                for future in futures:
                    if future.done() and not future.cancelled() and not future.exception():
                        self._finish(future.result(), interrupted=True)
                self.state.save()
                return True
        return False

    def _finish(self, result: CellResult, interrupted: bool = False) -> None:
        """Records an ended attempt once, saves sweep.json and prints its line (with the ETA)."""
        cell = result.cell
        if cell.name in self._recorded or (result.returncode is None and not result.lost):
            return
        self._remaining -= 1
        record = self.state.record_attempt(result, interrupted)
        self.state.save()
        self._recorded.add(cell.name)
        self._outcome.add(record["status"], cell.name)
        if record["status"] != "partial":
            self._durations.append(result.seconds)
        text = terminal.attempt_text(record, result.seconds, self.state.summary(cell))
        if not interrupted:
            elapsed = self.launcher.elapsed()
            eta = terminal.eta(self._durations, self._remaining, elapsed, self.launcher.slots)
            text += f"  ETA {eta}" if eta else ""
        self._print_cell(cell, text)
