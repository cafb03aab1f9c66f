"""What the benchmark measures with: clocks, RSS of a process tree, summaries, run results.

CPU seconds of this process plus its TFF workers are far less sensitive than
wall time to other jobs on a loaded machine, so rows report both.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psutil

from tff_vision import interrupts, runtime


def process_tree_rss(pid: int | None = None) -> dict[str, int]:
    """RSS in bytes of process `pid` (default: this one) and of the TFF workers it started.

    Returns:
        `{"self": ..., "workers": ..., "total": ...}`.
    """
    pid = os.getpid() if pid is None else pid
    own = psutil.Process(pid).memory_info().rss
    workers = 0
    for worker_pid in runtime.find_workers(pid):
        try:
            workers += psutil.Process(worker_pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return {"self": own, "workers": workers, "total": own + workers}


class Clock:
    """Wall time plus CPU time of this process and the TFF workers alive at creation."""

    def __init__(self):
        pids = [os.getpid(), *runtime.find_workers(os.getpid())]
        self._procs = [psutil.Process(p) for p in pids]
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:  # A worker that has exited.
                continue
            total += times.user + times.system
        return total

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        """Runs `fn()`, appending its wall and CPU seconds under `key`; returns its result."""
        interrupts.raise_if_interrupted()
        cpu0, wall0 = self._cpu(), time.perf_counter()
        result = fn()
        self.wall.setdefault(key, []).append(time.perf_counter() - wall0)
        self.cpu.setdefault(key, []).append(self._cpu() - cpu0)
        return result

    def steady(self, key: str) -> tuple[float, float]:
        """`steady_seconds` of the wall and of the CPU timings under `key`."""
        return steady_seconds(self.wall[key]), steady_seconds(self.cpu[key])


def steady_seconds(seconds: Sequence[float]) -> float:
    """Median of all but the first timing (the first alone when there is just one)."""
    seconds = list(seconds)
    if not seconds:
        raise ValueError("no timings")
    return statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


def mib(num_bytes: float) -> float:
    return num_bytes / 2**20


def ratio(numerator: float, denominator: float) -> float | None:
    """`numerator / denominator`, None unless the denominator is positive."""
    return numerator / denominator if denominator > 0 else None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def max_abs_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute elementwise difference between two equally long weight lists."""
    if len(a) != len(b):
        raise ValueError(f"weight lists differ in length: {len(a)} vs {len(b)}")
    return max((float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(a, b)), default=0.0)


def run_results(out: pathlib.Path) -> dict[str, Any]:
    """A run's results in `out` without wall times: metrics.csv rows and summary.json.

    Columns and keys that are durations (`round_seconds`, `seconds`,
    `wall_seconds`) are left out; every other value, to the last digit, stays.
    """
    import pandas as pd  # pylint: disable=g-import-not-at-top

    metrics = pd.read_csv(out / "metrics.csv", dtype=str, keep_default_na=False)
    metrics = metrics[[c for c in metrics.columns if not _is_time(c)]]
    summary = json.loads((out / "summary.json").read_text())
    return {"metrics": metrics.to_dict(orient="list"), "summary": _without_times(summary)}


def _is_time(key: str) -> bool:
    return key.endswith("seconds")


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not _is_time(k)}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value
