"""The `run_memory` suite: peak RSS of a whole `experiments.run`, process plus TFF workers.

The run is the README's reference federated run (ResNet-18 on RetinaMNIST, 3
hospitals excluding grades 1;2;3, `--baselines= --select=final`), started as
its own process so that nothing else of the benchmark is counted. RSS of the
process and all its descendants (TFF workers and their network relays) is
sampled every `_SAMPLE_SECONDS`; the row gives the peak of their sum.

With `memory_baseline_tree` (a checkout of an older commit, e.g. made by
`git worktree add /tmp/before <commit>`), the same run also goes through that
tree's code first: the row then compares the two peaks and checks that both
runs gave the same results (metrics.csv and summary.json, times aside).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from experiments.benchmarking.config import BenchmarkConfig, Row, yes_no
from experiments.benchmarking.measure import ratio, run_results
from tff_vision import childproc

_SAMPLE_SECONDS = 0.1
TARGET_BYTES = 2.5e9
_REPO = pathlib.Path(__file__).resolve().parents[2]


def reference_flags(config: BenchmarkConfig, output_dir: pathlib.Path) -> list[str]:
    """`experiments.run` flags of the measured run (the README's reference command)."""
    return [
        f"--dataset={config.dataset}",
        *([f"--data_dir={os.path.abspath(config.data_dir)}"] if config.data_dir else []),
        "--model=resnet18",
        "--partition=label_exclusion",
        "--num_clients=3",
        "--exclude=1;2;3",
        "--baselines=",
        "--select=final",
        f"--rounds={config.memory_run_rounds}",
        f"--seed={config.seed}",
        f"--output_dir={output_dir}",
        *config.memory_run_flags,
    ]


@dataclasses.dataclass
class RunPeak:
    """What one measured run gave: peak RSS (total, and its parts at that moment), wall time."""

    total: int
    own: int
    workers: int
    seconds: float
    results: dict


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """RSS of `proc` and the sum over its descendants, in bytes (0 for gone processes)."""
    own = descendants = 0
    try:
        own = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.Error:
        return own, 0
    for child in children:
        try:
            descendants += child.memory_info().rss
        except psutil.Error:
            pass
    return own, descendants


def measure_run(tree: pathlib.Path, config: BenchmarkConfig, output_dir: pathlib.Path) -> RunPeak:
    """Runs the reference command with `tree`'s code, sampling its process tree's RSS."""
    flags = reference_flags(config, output_dir)
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *flags],
        cwd=tree,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=childproc.die_with_parent(),
    ) as child:
        stderr: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr.append(child.stderr.read()), daemon=True)
        reader.start()
        peak = (0, 0)
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            sample = _tree_rss(proc)
            if sum(sample) > sum(peak):
                peak = sample
            time.sleep(_SAMPLE_SECONDS)
        reader.join()
    seconds = time.monotonic() - start
    if child.returncode:
        tail = b"".join(stderr).decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"the measured run exited {child.returncode}: {' '.join(tail)}")
    return RunPeak(sum(peak), peak[0], peak[1], seconds, run_results(output_dir))


def suite_run_memory(config: BenchmarkConfig, printer) -> list[Row]:
    """Peak RSS of the reference run (and of the baseline tree's, when given)."""
    with tempfile.TemporaryDirectory(prefix="tffv-run-memory-") as tmp:
        before = None
        if config.memory_baseline_tree:
            tree = pathlib.Path(config.memory_baseline_tree).resolve()
            before = measure_run(tree, config, pathlib.Path(tmp) / "before")
            printer(f"  run_memory before ({tree}): {_describe(before)}")
        after = measure_run(_REPO, config, pathlib.Path(tmp) / "after")
        printer(f"  run_memory: {_describe(after)}")
    return [_row(config, before, after)]


def _describe(peak: RunPeak) -> str:
    return (
        f"peak {peak.total / 1e9:.2f} GB (process {peak.own / 1e9:.2f} + workers "
        f"{peak.workers / 1e9:.2f}), {peak.seconds:.0f} s"
    )


def _peak_dict(peak: RunPeak) -> dict:
    return {k: v for k, v in dataclasses.asdict(peak).items() if k != "results"}


def _row(config: BenchmarkConfig, before: RunPeak | None, after: RunPeak) -> Row:
    identical = before is None or before.results == after.results
    values = _describe(after)
    if before is not None:
        same = "identical" if identical else "DIFFERENT"
        values += f" vs before {_describe(before)}; results {same}"
    extra = " " + " ".join(config.memory_run_flags) if config.memory_run_flags else ""
    return Row(
        suite="run_memory",
        setting=(
            f"reference run: resnet18, label exclusion 1;2;3, {config.memory_run_rounds} rounds"
            f"{extra}"
        ),
        data="real",
        values=values,
        ratio=ratio(after.total, before.total) if before else None,
        target=f"peak <= {TARGET_BYTES / 1e9:g} GB, same results",
        met=yes_no(after.total <= TARGET_BYTES and identical),
        details={
            "after": _peak_dict(after),
            "before": None if before is None else _peak_dict(before),
            "results_identical": identical if before is not None else None,
            "rounds": config.memory_run_rounds,
            "baseline_tree": config.memory_baseline_tree,
        },
    )
