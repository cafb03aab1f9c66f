"""Where a sweep's cells run: subprocesses on this host, or Ray tasks on a cluster's nodes.

A launcher turns a cell into a future of its `CellResult` and stops what it
started; the runner keeps all bookkeeping (sweep.json, the progress lines) in
its own thread, whichever launcher runs the cells:

    submit(cell)               a `concurrent.futures.Future` of the attempt's `CellResult`
    stop(futures, steps, say)  no further cell starts; running ones stop in order
    elapsed()                  seconds each running cell has run so far (for the ETA)
    slots                      how many cells run at once (for the ETA)
    close()                    frees what the launcher holds (idempotent)

`LocalLauncher` runs `CellProcesses` from a thread pool, `max_parallel` at once,
or with ``cell_processes="resident"`` `hosts.CellHosts`: the same cells, run one
after another in long-lived cell hosts.
`RayLauncher` makes each cell one Ray task with the cell's CPUs and GPUs; the
task runs the very same `CellProcesses` on its node, so a cell is a fresh
`python -m experiments.run` process there and gives exactly the numbers it
gives alone. The sweep directory must be at the same path on every node (a
shared filesystem, as on a cluster), and the runs start in the driver's
working directory, so that relative paths such as ``--data_dir`` resolve alike.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import pathlib
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tff_vision.sweep.grid import Cell, SweepError
from tff_vision.sweep.hosts import CELLS_PER_HOST, CellHosts
from tff_vision.sweep.process import STOP_STEPS, CellProcesses
from tff_vision.sweep.state import CellResult

# How long to wait for a Ray cluster's GCS to accept a connection: `ray.init` itself
# retries an address where nothing answers for many minutes.
_PROBE_SECONDS = 5.0
# After the stop steps, seconds to wait for cancelled Ray tasks to report.
_CANCEL_MARGIN = 10.0


class Launcher(Protocol):
    """What the runner needs of a launcher (see the module docstring)."""

    slots: int

    def submit(self, cell: Cell) -> concurrent.futures.Future: ...

    def stop(
        self,
        futures: Sequence[concurrent.futures.Future],
        steps: Sequence[tuple[int, float]],
        say: Callable[[str], None],
    ) -> None: ...

    def elapsed(self) -> list[float]: ...

    def pids(self) -> list[int]: ...

    def close(self) -> None: ...


CELL_PROCESSES = ("resident", "fresh")


class LocalLauncher:
    """Cells as subprocesses of this process, `max_parallel` at a time.

    `cell_processes`: "fresh", one `python -m experiments.run` per cell, or
    "resident", cells run one after another in long-lived cell hosts
    (`hosts.CellHosts`, at most `cells_per_host` cells each), which saves each
    cell the interpreter's start, the TF imports and the process's tracing.
    """

    def __init__(
        self,
        sweep_dir: os.PathLike | str,
        *,
        python: str,
        max_parallel: int = 1,
        cell_processes: str = "fresh",
        cells_per_host: int = CELLS_PER_HOST,
    ):
        if max_parallel < 1:
            raise SweepError(f"--max_parallel must be >= 1, got {max_parallel}")
        if cell_processes not in CELL_PROCESSES:
            raise SweepError(
                f"--cell_processes={cell_processes} is unknown; "
                f"use one of {', '.join(CELL_PROCESSES)}"
            )
        self.slots = max_parallel
        self._processes = (
            CellHosts(sweep_dir, python, cells_per_host=cells_per_host)
            if cell_processes == "resident"
            else CellProcesses(sweep_dir, python)
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_parallel, thread_name_prefix="sweep-cell"
        )

    def submit(self, cell: Cell) -> concurrent.futures.Future:
        return self._pool.submit(self._processes.run, cell)

    def stop(self, futures, steps, say) -> None:
        self._processes.stop(futures, steps, say)

    def elapsed(self) -> list[float]:
        return self._processes.elapsed()

    def pids(self) -> list[int]:
        """Process ids of the cells running now (with resident hosts: of their hosts)."""
        return self._processes.pids()

    def close(self) -> None:
        """Starts no further cell, waits for the running ones and ends every host. Idempotent.

        Idle hosts end before the pool's threads do: a host dies with the thread
        that started it (`childproc.die_with_parent`).
        """
        self._processes.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._processes.close()  # Hosts whose cells were still running above.


def run_on_node(
    cell: Cell, sweep_dir: str, cwd: str | None, steps: Sequence[tuple[int, float]]
) -> CellResult:
    """The Ray task: runs `cell` on this node to its end, or stops it in `steps` on cancel.

    `ray.cancel` raises KeyboardInterrupt here (within half a second); the run
    then gets SIGINT (it exits 130 after its last checkpoint), escalating as in
    the local launcher.
    A cell that asked for no GPU sees none.
    """
    import ray  # pylint: disable=import-outside-toplevel  # Present on every Ray node.

    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    processes = CellProcesses(sweep_dir, sys.executable, cwd=cwd)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-cell")
    future = pool.submit(processes.run, cell)
    try:
        # Ray's cancel sets Python's interrupt flag without a signal: only a wait that
        # wakes up now and then lets the KeyboardInterrupt in.
        while not concurrent.futures.wait([future], timeout=0.5).done:
            pass
        return future.result()
    except KeyboardInterrupt:
        processes.stop([future], steps, functools.partial(print, file=sys.stderr))
        return future.result()
    finally:
        pool.shutdown(wait=True)


def _import_ray() -> Any:
    """The `ray` module; `SweepError` if it is not installed."""
    try:
        import ray  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise SweepError(
            "--launcher=ray needs Ray, which is not installed; install it from "
            "requirements.lock (pip install --no-deps -r requirements.lock)"
        ) from None
    return ray


def _probe(ray: Any, address: str) -> str:
    """The cluster's HOST:PORT for `address` ("auto" or HOST:PORT), once it accepts connections."""
    try:
        resolved = ray._private.services.canonicalize_bootstrap_address_or_die(address)
    except AttributeError:  # A Ray without this helper: let ray.init resolve it.
        return address
    except (ConnectionError, ValueError) as e:
        raise SweepError(
            f"no Ray cluster at --ray_address={address} ({_first_line(e)}); start one "
            "(ray start --head) or pass its HOST:PORT"
        ) from None
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_PROBE_SECONDS):
            pass
    except (OSError, ValueError) as e:
        raise SweepError(
            f"cannot reach a Ray cluster at {resolved} (--ray_address={address}: {e}); "
            "start one (ray start --head) or pass the HOST:PORT that `ray start` printed"
        ) from None
    return resolved


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The first sentence of an error's text (Ray's run on for lines)."""
    lines = str(error).strip().splitlines()
    return (lines[0].split(". ")[0] if lines else type(error).__name__)[:limit]


def cell_slots(nodes: Sequence[Mapping[str, Any]], cpus: float, gpus: float) -> int:
    """How many cells of `cpus` CPUs and `gpus` GPUs the live nodes hold at once."""
    slots = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        resources = node.get("Resources") or {}
        fits = [math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)]
        if gpus:
            fits.append(math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
        slots += min(fits)
    return slots


def check_cell_resources(cpus: float, gpus: float) -> None:
    """`SweepError` unless Ray can give a cell `cpus` CPUs and `gpus` GPUs."""
    if not cpus > 0:
        raise SweepError(f"--cell_cpus must be > 0, got {cpus}")
    if not gpus >= 0 or (gpus > 1 and gpus != int(gpus)):
        raise SweepError(
            f"--cell_gpus must be a fraction of one GPU (0 to 1) or a whole number, got {gpus}"
        )


class RayLauncher:
    """Cells as Ray tasks on the cluster at `address`, as many at once as its resources hold.

    Connecting happens here, so a cluster that cannot be reached is a
    `SweepError` before anything is written. A task that Ray loses (its node
    died) is recorded as failed and never retried by Ray: the sweep goes on,
    and a rerun resumes the cell from its checkpoints. Ray does not tell the
    driver when a queued task starts; `elapsed` counts the oldest unfinished
    cells, `slots` of them, as running.
    """

    def __init__(
        self,
        sweep_dir: os.PathLike | str,
        *,
        address: str = "auto",
        cell_cpus: float = 1.0,
        cell_gpus: float = 0.0,
        cwd: os.PathLike | str | None = None,
        stop_steps: Sequence[tuple[int, float]] = STOP_STEPS,
    ):
        check_cell_resources(cell_cpus, cell_gpus)
        self.sweep_dir = pathlib.Path(sweep_dir)
        self.cwd = str(cwd or os.getcwd())
        self.stop_steps = tuple(stop_steps)
        self._ray = _import_ray()
        self.address = _probe(self._ray, address)
        self._connect()
        try:
            nodes = [n for n in self._ray.nodes() if n.get("Alive")]
            self.nodes = len(nodes)
            self.slots = cell_slots(nodes, cell_cpus, cell_gpus)
        except BaseException:
            self.close()
            raise
        if not self.slots:
            self.close()
            raise SweepError(
                f"no node of the Ray cluster at {self.address} has {cell_cpus:g} CPU(s) and "
                f"{cell_gpus:g} GPU(s) for a cell; lower --cell_cpus/--cell_gpus or add a node"
            )
        self.resources = f"{cell_cpus:g} CPU, {cell_gpus:g} GPU"
        self._task = self._ray.remote(run_on_node)
        self._options = {"num_cpus": cell_cpus, "num_gpus": cell_gpus, "max_retries": 0}
        self._lock = threading.Lock()
        self._stopping = False
        self._refs: dict[str, Any] = {}  # Unfinished tasks by cell name, in submission order.
        self._started: dict[str, float] = {}
        self._forced: set[str] = set()

    def _connect(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # Ray's notes on future defaults.
                self._ray.init(
                    address=self.address, log_to_driver=False, logging_level=logging.WARNING
                )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SweepError(
                f"cannot connect to the Ray cluster at {self.address} ({_first_line(e)}); "
                "check --ray_address and that this Ray and Python match the cluster's"
            ) from None

    def describe(self) -> str:
        """Where and how the cells run, for the sweep's first line."""
        return (
            f"as Ray tasks on {self.address} ({self.nodes} node(s), up to {self.slots} "
            f"at a time with {self.resources} each)"
        )

    def submit(self, cell: Cell) -> concurrent.futures.Future:
        out: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._stopping:
                out.set_result(CellResult(cell, None))
                return out
            ref = self._task.options(name=f"sweep cell {cell.name}", **self._options).remote(
                cell, str(self.sweep_dir), self.cwd, self.stop_steps
            )
            self._refs[cell.name] = ref
            self._count_running()
        ref.future().add_done_callback(functools.partial(self._resolve, cell, out))
        return out

    def _count_running(self) -> None:
        """Counts the oldest unfinished cells, up to `slots`, as started (lock held)."""
        now = time.monotonic()
        for name in list(self._refs)[: self.slots]:
            self._started.setdefault(name, now)

    def _resolve(self, cell: Cell, out: concurrent.futures.Future, done) -> None:
        """Turns a finished Ray task into the attempt's `CellResult` (in a Ray thread)."""
        with self._lock:
            self._refs.pop(cell.name, None)
            start = self._started.pop(cell.name, None)
            forced = cell.name in self._forced
            self._count_running()
        seconds = time.monotonic() - start if start is not None else 0.0
        try:
            result = done.result()
        except self._ray.exceptions.TaskCancelledError:
            # Cancelled before it started, or killed after the stop steps.
            result = CellResult(cell, None, seconds, lost="cancelled" if forced else "")
        except Exception as e:  # pylint: disable=broad-exception-caught  # Node death, ...
            lost = f"its Ray task ended without an exit status ({type(e).__name__}: "
            result = CellResult(cell, None, seconds, lost=f"{lost}{_first_line(e)})")
        out.set_result(result)

    def stop(self, futures, steps, say) -> None:
        """Cancels every unfinished task: queued ones never start, running ones stop in `steps`.

        A Ctrl-C while waiting, or a task not ended after the steps, kills the
        task's worker (its run dies with it).
        """
        with self._lock:
            self._stopping = True
            refs = dict(self._refs)
        if refs:
            say(
                f"interrupted: stopping {len(refs)} unfinished cell(s) on Ray "
                "(they keep their checkpoints; Ctrl-C again to stop them faster)"
            )
        for ref in refs.values():
            self._ray.cancel(ref)
        try:
            concurrent.futures.wait(futures, timeout=sum(g for _, g in steps) + _CANCEL_MARGIN)
        except KeyboardInterrupt:
            pass
        with self._lock:
            left = {name: ref for name, ref in self._refs.items() if name in refs}
            self._forced.update(left)
        for ref in left.values():
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        with contextlib.suppress(KeyboardInterrupt):
            concurrent.futures.wait(futures, timeout=_CANCEL_MARGIN)

    def elapsed(self) -> list[float]:
        now = time.monotonic()
        with self._lock:
            return [now - start for start in self._started.values()]

    def pids(self) -> list[int]:
        """None here: the runs are processes of the cluster's nodes."""
        return []

    def close(self) -> None:
        """Disconnects from the cluster; Ray ends this driver's unfinished tasks."""
        with contextlib.suppress(Exception):
            self._ray.shutdown()
