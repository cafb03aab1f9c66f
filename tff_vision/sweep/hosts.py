"""Resident cell hosts: long-lived processes that run a sweep's cells one after another.

A fresh `python -m experiments.run` per cell pays Python's start, the TF and
TFF imports and the tracing of the algorithm's process every time. A cell
host (`python -m experiments.cell_host`) pays them once and runs cells in
turn, each through the very code path of `experiments.run` with a fresh TFF
context, so a cell gives the numbers it gives alone. This module holds both
ends of the pipe between launcher and host:

    launcher -> host (stdin)    {"argv": ["--flag=value", ...], "log": "<cell>/log.txt"}
    host -> launcher (stdout)   {"status": N}    N: the exit status `experiments.run` would have
                                {"refused": why} the cell needs process-wide settings other
                                                 than the host's (nothing ran): use a new host

one JSON object per line, one cell at a time. The host appends the cell's
stdout and stderr (file descriptors 1 and 2, so TF's C++ logs too) to the
log; its own output between cells goes to `<sweep_dir>/cell_hosts.log`. It
ends on end of input, and after replying for a cell that neither finished (0)
nor stopped on bad input (2): an interrupted or crashed cell leaves nothing
behind for the next one.

`CellHosts` is the launcher's side, a drop-in for `CellProcesses`: each
running cell has a host process, which is what gets the stop signals (SIGINT:
the cell checkpoints and exits 130, then SIGTERM, SIGKILL), and a host that
dies during a cell fails that cell only; the next cell gets a new host. A host
serves at most `cells_per_host` cells (bounding the memory a process gathers),
and hosts die with the sweep (`childproc.die_with_parent`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tff_vision.sweep.grid import Cell, SweepError
from tff_vision.sweep.process import CellProcesses, LastLine, cell_env
from tff_vision.sweep.state import CellResult

HOST_MODULE = "experiments.cell_host"
CELLS_PER_HOST = 25
# In the sweep directory: the hosts' own output between cells (e.g. an import that failed).
HOSTS_LOG = "cell_hosts.log"
# Seconds a host that was told to end (end of input) may take before it is killed.
_CLOSE_SECONDS = 30.0


class Refused(Exception):
    """Raised by a host's cell function for a cell this host must not run (see the module doc)."""


# --- the host's end -----------------------------------------------------------------------------


def serve(run_cell: Callable[[list[str]], int | None]) -> int:
    """Runs the cells that arrive on stdin with `run_cell(argv)`, replying on stdout.

    Takes this process's stdin and stdout for the pipe (both then point at
    /dev/null, so no cell reads or writes them). `run_cell` returns the cell's
    exit status (None: 0) or raises `SystemExit` like a runner; any other
    exception is printed to the cell's log as a traceback, status 1. Returns
    the host's own exit status.
    """
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        while line := requests.readline():
            request = json.loads(line)
            try:
                with output_to(request["log"]):
                    status = _cell_status(run_cell, list(request["argv"]))
            except Refused as e:
                _reply(replies, refused=str(e))
                continue
            _reply(replies, status=status)
            if status not in (0, 2):
                return status
    except KeyboardInterrupt:
        return 130
    return 0


def _reply(replies, **message: Any) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()


def _cell_status(run_cell: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """`run_cell(argv)`'s exit status, whichever way it ends (`Refused` passes through)."""
    try:
        return int(run_cell(argv) or 0)
    except Refused:
        raise
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # pylint: disable=broad-except  # As an uncaught one ends a run: exit 1.
        traceback.print_exc()
        return 1


@contextlib.contextmanager
def output_to(path: os.PathLike | str) -> Iterator[None]:
    """File descriptors 1 and 2 append to `path` meanwhile (Python's and C++'s output alike)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (fd, *saved):
            os.close(descriptor)


# --- the launcher's end -------------------------------------------------------------------------


class CellHost:
    """One host process; `send` runs a cell in it and waits for its reply."""

    def __init__(
        self,
        python: str,
        cwd: os.PathLike | str | None,
        preexec: Callable[[], None],
        log: pathlib.Path,
    ):
        """`log`: where the host's own output goes (a cell's goes to the cell's log)."""
        with open(log, "ab") as own_log:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [python, "-m", HOST_MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=own_log,
                env=cell_env(),
                cwd=cwd,
                close_fds=True,
                process_group=0,  # Ctrl-C in the terminal reaches only the sweep.
                preexec_fn=preexec,  # noqa: PLW1509
            )
        self.cells = 0

    def send(self, argv: Sequence[str], log: pathlib.Path) -> dict[str, Any] | None:
        """Runs one cell; the host's reply, or None if the host ended without one."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(
                (json.dumps({"argv": list(argv), "log": str(log)}) + "\n").encode()
            )
            self.proc.stdin.flush()
        except OSError:  # It died between cells.
            return None
        line = self.proc.stdout.readline()
        if not line:
            return None
        self.cells += 1
        return json.loads(line)

    def end(self) -> None:
        """Tells the host to end (end of its input); `reap` waits for it."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def reap(self, timeout: float = _CLOSE_SECONDS) -> None:
        """Waits for the host to end (killing it after `timeout` seconds)."""
        self.end()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class CellHosts(CellProcesses):
    """`CellProcesses` whose cells run in resident hosts, up to `cells_per_host` cells each."""

    def __init__(
        self,
        sweep_dir: os.PathLike | str,
        python: str,
        cwd: os.PathLike | str | None = None,
        cells_per_host: int = CELLS_PER_HOST,
    ):
        super().__init__(sweep_dir, python, cwd)
        if cells_per_host < 1:
            raise SweepError(f"--cells_per_host must be >= 1, got {cells_per_host}")
        self.cells_per_host = cells_per_host
        self._idle: list[CellHost] = []
        self._ended: list[CellHost] = []  # Told to end, not reaped yet.

    def _host(self, cell: Cell) -> CellHost | None:
        """An idle host, else a new one, registered as running `cell`; None once stopping began.

        Raises:
            OSError: If a new host cannot be started.
        """
        with self._lock:
            if self._stopping:
                return None
            host = None
            while self._idle and host is None:
                host = self._idle.pop()
                if host.proc.poll() is not None:  # Ended while idle (killed from outside).
                    self._ended.append(host)
                    host = None
            host = host or CellHost(
                self.python, self.cwd, self._preexec, self.sweep_dir / HOSTS_LOG
            )
            self._running[cell.name] = host.proc
            self._started.setdefault(cell.name, time.monotonic())
            return host

    def _send(self, cell: Cell, log: pathlib.Path) -> tuple[CellHost, dict | None] | None:
        """The host that ran `cell` and its reply (None: it died); None if never started."""
        argv = cell.command(self.sweep_dir, self.python)[3:]  # The flags after `-m module`.
        while True:
            host = self._host(cell)
            if host is None:
                return None
            reply = host.send(argv, log)
            if reply is None or "refused" not in reply:
                return host, reply
            self._retire(host)  # Settings of its own: a new host (which refuses nothing).

    def run(self, cell: Cell) -> CellResult:
        """Runs one cell to its end in a host (in a pool thread), its output appended to its log."""
        with self._lock:
            log = self._open_log(cell, cell.command(self.sweep_dir, self.python))
            if isinstance(log, CellResult):
                return log
        start, offset, returncode = time.monotonic(), log.tell(), None
        try:
            sent = self._send(cell, pathlib.Path(log.name))
        except OSError as e:
            sent = CellResult(cell, 127, 0.0, f"cannot start a cell host ({self.python}): {e}")
        try:
            if not isinstance(sent, tuple):
                return sent or CellResult(cell, None)
            host, reply = sent
            returncode = int(reply["status"]) if reply else host.proc.wait()
            self._retire(host, keep=reply is not None and returncode in (0, 2))
            last_line = _last_line(log.name, offset)
            if reply is None and not last_line:
                last_line = f"its cell host (pid {host.proc.pid}) ended; see {HOSTS_LOG}"
            return CellResult(cell, returncode, time.monotonic() - start, last_line, host.proc.pid)
        finally:
            with self._lock:
                self._running.pop(cell.name, None)
                self._started.pop(cell.name, None)
            log.write(f"=== {_footer(sent, returncode)}\n".encode())
            log.close()

    def _retire(self, host: CellHost, keep: bool = False) -> None:
        """Back to the idle hosts if `keep` and it may serve more cells; else told to end."""
        with self._lock:
            if keep and not self._stopping and host.cells < self.cells_per_host:
                self._idle.append(host)
                return
            self._ended.append(host)
        host.end()

    def close(self) -> None:
        """Starts no further cell and ends every host that runs none, waiting for it. Idempotent."""
        with self._lock:
            self._stopping = True
            hosts, self._idle, self._ended = self._idle + self._ended, [], []
        for host in hosts:
            host.end()
        for host in hosts:
            host.reap()


def _footer(sent: tuple[CellHost, dict | None] | CellResult | None, returncode: int | None) -> str:
    """The log's last line of an attempt: its exit status and host."""
    if sent is None:
        return "not started: the sweep is stopping"
    if isinstance(sent, CellResult):
        return f"exit status {sent.returncode}"
    return f"exit status {returncode} (cell host pid {sent[0].proc.pid})"


def _last_line(log_path: str, offset: int) -> str:
    """The `LastLine` of what the cell wrote to its log after `offset`."""
    last = LastLine()
    with contextlib.suppress(OSError), open(log_path, "rb") as log:
        log.seek(offset)
        for raw in log:
            last.add(raw)
    return last.text
