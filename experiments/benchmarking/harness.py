"""`run`: the suites of a `BenchmarkConfig` in this process, with what they ran on."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import tensorflow as tf
import tensorflow_federated as tff

from experiments.benchmarking.config import BenchmarkConfig, BenchmarkResult, Row
from experiments.benchmarking.measure import load_average
from experiments.benchmarking.suites import SUITE_FNS
from tff_vision import devices, runtime


def run(config: BenchmarkConfig, printer: Callable[[str], None] = print) -> BenchmarkResult:
    """Runs the suites of `config` in this process and returns their rows.

    Applies the config's device, op-determinism and precision settings to
    this process (and so to the workers it starts), and owns the TFF runtime
    meanwhile: `runtime.shutdown()` after each suite also stops workers this
    process started before.
    """
    config.validate()
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_average(),
        "devices": devices.configure_devices(verbose=False),
        "op_determinism": devices.set_op_determinism(config.op_determinism),
        "precision": devices.set_mixed_precision(config.mixed_precision),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tensorflow_federated": tff.__version__,
        "suite_seconds": {},
    }
    rows: list[Row] = []
    t_start = time.perf_counter()
    try:
        for suite in config.suites:
            printer(f"[benchmark] {suite} ...")
            t0 = time.perf_counter()
            rows.extend(SUITE_FNS[suite](config, printer))
            meta["suite_seconds"][suite] = time.perf_counter() - t0
    finally:
        runtime.shutdown()
    meta["seconds"] = time.perf_counter() - t_start
    meta["load_average_end"] = load_average()
    return BenchmarkResult(rows=rows, meta=meta, config=config)
