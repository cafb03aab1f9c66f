"""The cells' subprocesses: each started with its log, drained, and stopped in order.

Each cell runs in its own process group, so a Ctrl-C in the terminal reaches
only the sweep, which then stops the cells itself: one SIGINT (the run
checkpoints nothing half-written and exits 130), escalating to SIGTERM and
SIGKILL if a cell does not stop. A cell also gets SIGKILL should the sweep
itself die (`childproc.die_with_parent`). One lock guards the table of
running processes, so no cell starts once stopping has begun.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pathlib
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from tff_vision import childproc
from tff_vision.sweep.grid import Cell
from tff_vision.sweep.state import LOG_FILE, CellResult, timestamp

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Escalation when stopping cells: signal, then seconds to wait for them to exit.
STOP_STEPS = ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))


def cell_env() -> dict[str, str]:
    """The cells' environment: this package importable, output unbuffered."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"  # log.txt follows the run live.
    return env


def child_preexec(base: Callable[[], None] | None) -> Callable[[], None]:
    """`base` (see `childproc`), after giving the child the stop signals back.

    A blocked or ignored signal stays so across exec. A launcher's thread may
    block SIGINT (a Ray worker does), and a sweep started in the background by
    a script (`nohup ... &`) ignores it: the cell would miss the first stop step.
    """

    def preexec() -> None:  # Runs in the child between fork and exec.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if base is not None:
            base()

    return preexec


class LastLine:
    """The line a failed cell is reported by: its last ``error: `` line, else its last line.

    The last ``error: `` line (the runners' one-line errors) wins over any
    later noise.
    """

    def __init__(self):
        self.last_line = self.last_error = ""

    def add(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").strip()
        if line:
            self.last_line = line
            if line.startswith("error: "):
                self.last_error = line

    @property
    def text(self) -> str:
        return self.last_error or self.last_line


def _drain(proc: subprocess.Popen, log: BinaryIO) -> str:
    """Copies the run's stderr into its log until it ends; returns its `LastLine`."""
    last = LastLine()
    assert proc.stderr is not None
    for raw in proc.stderr:
        log.write(raw)
        last.add(raw)
    return last.text


def open_log(cell: Cell, sweep_dir: pathlib.Path, header: str) -> BinaryIO | CellResult:
    """The cell's log opened for appending, `header` written; a failed result if it cannot be."""
    out = cell.output_dir(sweep_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Closed by the caller once the cell ends, hence no `with`.
        log = open(out / LOG_FILE, "ab", buffering=0)  # noqa: SIM115
    except OSError as e:
        return CellResult(cell, 126, 0.0, f"cannot write {out / LOG_FILE}: {e}")
    log.write(f"\n=== {timestamp()} {header}\n".encode())
    return log


class CellProcesses:
    """Starts cell runs (one per pool thread), knows which run now, stops them all."""

    def __init__(
        self, sweep_dir: os.PathLike | str, python: str, cwd: os.PathLike | str | None = None
    ):
        """`cwd`: where the runs start (relative flag paths resolve there); None: here."""
        self.sweep_dir = pathlib.Path(sweep_dir)
        self.python = python
        self.cwd = cwd
        self._lock = threading.Lock()
        self._stopping = False
        self._running: dict[str, subprocess.Popen] = {}
        self._started: dict[str, float] = {}
        self._preexec = child_preexec(childproc.die_with_parent())

    def pids(self) -> list[int]:
        """Process ids of the cells running now."""
        with self._lock:
            return [proc.pid for proc in self._running.values()]

    def elapsed(self) -> list[float]:
        """Seconds each running cell has run so far."""
        now = time.monotonic()
        with self._lock:
            return [now - start for start in self._started.values()]

    def _open_log(self, cell: Cell, command: list[str]) -> BinaryIO | CellResult:
        """The cell's log, opened for this attempt; a result instead once stopping began.

        Call with the lock held, so that no cell starts once stopping has begun.
        """
        if self._stopping:
            return CellResult(cell, None)
        return open_log(cell, self.sweep_dir, f"attempt: {shlex.join(command)}")

    def _start(self, cell: Cell) -> tuple[subprocess.Popen, BinaryIO, float] | CellResult:
        """Opens the cell's log and starts its run, unless stopping began; a result if not run."""
        command = cell.command(self.sweep_dir, self.python)
        with self._lock:
            log = self._open_log(cell, command)
            if isinstance(log, CellResult):
                return log
            start = time.monotonic()
            try:
                proc = subprocess.Popen(  # pylint: disable=consider-using-with
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.PIPE,
                    env=cell_env(),
                    cwd=self.cwd,
                    close_fds=True,
                    process_group=0,  # Ctrl-C in the terminal reaches only the sweep.
                    preexec_fn=self._preexec,  # noqa: PLW1509
                )
            except OSError as e:
                log.close()
                return CellResult(cell, 127, 0.0, f"cannot start {command[0]}: {e}")
            self._running[cell.name] = proc
            self._started[cell.name] = start
        return proc, log, start

    def run(self, cell: Cell) -> CellResult:
        """Runs one cell to its end (in a pool thread), its output appended to its log."""
        started = self._start(cell)
        if isinstance(started, CellResult):
            return started
        proc, log, start = started
        try:
            last_line = _drain(proc, log)
            returncode = proc.wait()
        finally:
            with self._lock:
                self._running.pop(cell.name, None)
                self._started.pop(cell.name, None)
            log.write(f"=== exit status {proc.poll()}\n".encode())
            log.close()
        return CellResult(cell, returncode, time.monotonic() - start, last_line, proc.pid)

    def close(self) -> None:
        """Nothing to free: every run ends with its cell."""

    def stop(
        self,
        futures: Sequence[concurrent.futures.Future],
        steps: Sequence[tuple[int, float]],
        say: Callable[[str], None],
    ) -> None:
        """Stops every running cell and starts no other: each signal of `steps` in turn.

        `futures` are the pool's cells: those not started are cancelled, and the
        threads of the others are waited for (they drain the stopped cells'
        pipes). A Ctrl-C while waiting moves on to the next, harder signal at
        once; a cell still alive after the last step is killed.
        """
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        stop_processes(running, futures, steps, say)


def stop_processes(
    running: Sequence[subprocess.Popen],
    futures: Sequence[concurrent.futures.Future],
    steps: Sequence[tuple[int, float]],
    say: Callable[[str], None],
) -> None:
    """Cancels the `futures` not started and stops the `running` cells: `steps` in turn.

    See `CellProcesses.stop`; every process of `running` is reaped when this returns.
    """
    for future in futures:
        future.cancel()  # Cells not started yet never will be.
    if running:
        say(
            f"interrupted: stopping {len(running)} running cell(s) "
            "(they keep their checkpoints; Ctrl-C again to stop them faster)"
        )
    for signum, grace in steps:
        alive = [p for p in running if p.poll() is None]
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
    with contextlib.suppress(KeyboardInterrupt):
        for proc in running:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        concurrent.futures.wait(futures, timeout=30)
