"""Shared pieces of the runner tests: the runner as a subprocess, its flags, its verdicts.

The runner tests start real `python -m experiments.run` processes on the
reference setting of `fl_testing.RETINA_LABEL_EXCLUSION` (real RetinaMNIST,
three hospitals lacking classes 1, 2 and 3, the small CNN) and each class
keeps its runs under one temporary directory.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import fl_testing
from absl.testing import parameterized

ROOT = pathlib.Path(__file__).resolve().parents[1]


def runner_flags(**settings) -> list[str]:
    """`--name=value` flags of the reference setting with `settings` added or replaced."""
    return [f"--{k}={v}" for k, v in dict(fl_testing.RETINA_LABEL_EXCLUSION, **settings).items()]


def runner_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "experiments.run", *flags]


def runner_env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))


def run_command(
    command: list[str], *, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Runs `command` in the repo root to its end (`runner_env` by default), stdin closed;
    stdout and stderr captured as text."""
    return subprocess.run(
        command,
        cwd=ROOT,
        env=runner_env() if env is None else env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )


def run_runner(*flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the runner to its end with `flags`; stdout and stderr captured as text."""
    return run_command(runner_command(*flags), timeout=timeout)


def start_runner(*flags: str, **popen_args) -> subprocess.Popen:
    """Starts the runner with `flags`, stdin closed; `popen_args` choose the output pipes."""
    return subprocess.Popen(
        runner_command(*flags), cwd=ROOT, env=runner_env(), stdin=subprocess.DEVNULL, **popen_args
    )


def checkpoint_path(out: pathlib.Path, round_num: int) -> pathlib.Path:
    """Where a run into `out` saves the federated state of round `round_num`."""
    return pathlib.Path(out) / "checkpoints" / "federated" / f"round_{round_num}.npz"


def wait_for_checkpoint(proc: subprocess.Popen, out: pathlib.Path, round_num: int) -> None:
    """Waits until the run `proc` has saved round `round_num`; AssertionError if it ends first."""
    path, deadline = checkpoint_path(out, round_num), time.monotonic() + 300
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended ({proc.returncode}) before {path} was written")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} after 300 s")
        time.sleep(0.02)


def kill_after_checkpoint(
    proc: subprocess.Popen, out: pathlib.Path, round_num: int, before_kill=lambda: None
) -> None:
    """SIGKILLs the run `proc` once round `round_num` is saved (after `before_kill()`)."""
    try:
        wait_for_checkpoint(proc, out, round_num)
        before_kill()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Stop(KeyboardInterrupt):
    """Raised by `stop_after_round` as if the run were killed there."""


def stop_after_round(label: str, n: int):
    """A printer that stops an in-process run once `[label] round n/...` is printed.

    That line is printed after the round's checkpoint, so a rerun resumes after round n.
    """

    def printer(line):
        if line.startswith(f"[{label}] round {n}/"):
            raise Stop()

    return printer


def expected_round(result, log) -> int:
    """The round `result` must report, from its per-round log (metrics.csv, baselines/*.csv).

    best_val: the round with the highest val AUC, the earliest of ties; final: the last round.
    """
    if result["select"] == "final":
        return int(log["round"].iloc[-1])
    scored = log[log["val_auc"].notna()]
    return int(scored.loc[scored["val_auc"].idxmax(), "round"])


def stderr_excerpt(stderr: str, size: int = 3000) -> str:
    """The end of a run's stderr, or, after a crash, Python's fault report from its start.

    The report's thread stacks come first and its list of extension modules
    last; the list alone would fill the end.
    """
    crash = stderr.find("Fatal Python error")
    return stderr[crash : crash + size] if crash >= 0 else stderr[-size:]


class RunnerTestCase(parameterized.TestCase):
    """A test class whose runs go under `self.tmp`, one temporary directory for the class."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"tff_vision_{cls.__name__}_"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def assertFinished(self, result: subprocess.CompletedProcess, out: pathlib.Path) -> dict:
        """Asserts that the run exited 0; returns its summary.json."""
        self.assertEqual(result.returncode, 0, msg=stderr_excerpt(result.stderr))
        return json.loads((out / "summary.json").read_text())

    def assertOneLineError(self, result: subprocess.CompletedProcess, expected: str) -> None:
        """Asserts exit status 2 and one `error: ...` line on stderr containing `expected`."""
        self.assertEqual(result.returncode, 2, msg=result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        self.assertLen(lines, 1, msg=result.stderr)
        self.assertStartsWith(lines[0], "error: ")
        self.assertIn(expected, lines[0])
        self.assertNotIn("Traceback", result.stderr)
