"""Tests for `python -m experiments.sweep`: flags, dry run, and one real sweep end to end.

The end-to-end test runs the real CLI on the real RetinaMNIST file: interrupted,
resumed, extended by a failing cell, rerun without recomputation, and reported.
The sweep package itself is tested, without TensorFlow, in sweep_test.py.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import run_testing
from absl.testing import absltest

from tff_vision import runtime

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED = _ROOT.parent / "shared" / "medmnist"


def _sweep_command(sweep_dir, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.sweep",
        f"--sweep_dir={sweep_dir}",
        "--algorithms=fedavg",
        "--models=cnn",
        "--seeds=0",
        "--dataset=retinamnist",
        f"--data_dir={_SHARED}",
        "--rounds=1",
        "--local_epochs=1",
        "--num_clients=3",
        "--eval_every=1",
        *extra,
    ]


_env = run_testing.runner_env


def _run(command, timeout=300):
    return run_testing.run_command(command, timeout=timeout)


class CliTest(absltest.TestCase):
    def test_dry_run_lists_cells_and_writes_nothing(self):
        sweep_dir = pathlib.Path(self.create_tempdir().full_path) / "s"
        result = _run(
            _sweep_command(
                sweep_dir, "--partitions=iid,label_exclusion,dirichlet:0.10", "--dry_run"
            )
        )
        self.assertEqual(result.returncode, 0, msg=result.stderr[-2000:])
        self.assertIn("pending  partition=iid__algorithm=fedavg__model=cnn__seed=0", result.stdout)
        self.assertIn("pending  partition=dirichlet-0.1__algorithm=fedavg", result.stdout)
        self.assertIn("3 cells", result.stdout)
        self.assertFalse(sweep_dir.exists())

    def test_bad_flags_exit_2_with_one_line(self):
        sweep_dir = pathlib.Path(self.create_tempdir().full_path) / "s"
        for extra, expected in (
            (["--partitions=iid,dirichlet:zero"], "dirichlet:zero"),
            (["--partitions=iid", "--partition=iid"], "--partitions"),
            (["--partitions=iid", "--cell_processes=fresh", "--cells_per_host=5"], "resident"),
        ):
            result = _run(_sweep_command(sweep_dir, *extra), timeout=120)
            self.assertEqual(result.returncode, 2, msg=result.stderr[-2000:])
            lines = result.stderr.strip().splitlines()
            self.assertLen(lines, 1, msg=result.stderr)
            self.assertStartsWith(lines[0], "error: ")
            self.assertIn(expected, lines[0])
            self.assertFalse(sweep_dir.exists())


class EndToEndTest(absltest.TestCase):
    """The real CLI on RetinaMNIST: interrupted, rerun with a failing cell added, reported."""

    def setUp(self):
        super().setUp()
        if not (_SHARED / "retinamnist.npz").exists():
            self.skipTest(f"real MedMNIST file {_SHARED / 'retinamnist.npz'} not present")
        self.dir = pathlib.Path(self.create_tempdir().full_path) / "sweep"

    def _state(self):
        data = json.loads((self.dir / "sweep.json").read_text())
        return {r["partition"]: r for r in data["cells"]}

    def _assert_no_workers(self):
        for record in self._state().values():
            if record.get("pid"):
                self.assertFalse(psutil.pid_exists(record["pid"]), record)  # Reaped.
                self.assertEqual(runtime.find_workers(owner_pid=record["pid"]), [], record)

    def test_interrupt_rerun_fail_report(self):
        iid_dir = self.dir / "cells" / "partition=iid__algorithm=fedavg__model=cnn__seed=0"
        dir_dir = (
            self.dir / "cells" / "partition=dirichlet-0.5__algorithm=fedavg__model=cnn__seed=0"
        )
        self._interrupt_second_cell(iid_dir, dir_dir)
        self._rerun_with_a_failing_cell(iid_dir)
        self._report(iid_dir, dir_dir)

    def _interrupt_second_cell(self, iid_dir, dir_dir):
        """1. Ctrl-C (SIGINT to the sweep process only) while the second cell runs."""
        proc = subprocess.Popen(
            _sweep_command(self.dir, "--partitions=iid,dirichlet:0.5"),
            cwd=_ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 240
            while not (dir_dir / "flags.json").exists():
                self.assertIsNone(proc.poll(), "the sweep ended before it could be interrupted")
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 130, msg=stdout + stderr[-3000:])
        self.assertRegex(
            stdout,
            r"\[cells 1/2\] partition=iid__algorithm=fedavg__model=cnn__seed=0: "
            r"acc \d\.\d{3} auc \d\.\d{3} \(\d+ s\)  ETA \d+",
        )
        self.assertIn("[cells 2/2] partition=dirichlet-0.5", stdout)
        self.assertIn("left partial", stdout)
        self.assertIn("rerun the same command to resume", stderr)
        state = self._state()
        self.assertEqual(state["iid"]["status"], "done")
        self.assertEqual(state["dirichlet:0.5"]["status"], "partial")
        self.assertFalse((dir_dir / "summary.json").exists())
        self._assert_no_workers()

    def _rerun_with_a_failing_cell(self, iid_dir):
        """2. Rerun with one more partition that cannot work (5 classes < 9).

        The done cell is skipped, the interrupted one finishes, the new one is
        recorded as failed: status 1.
        """
        summary = (iid_dir / "summary.json").read_bytes()
        mtime = (iid_dir / "summary.json").stat().st_mtime_ns
        log = (iid_dir / "log.txt").read_text()
        result = _run(_sweep_command(self.dir, "--partitions=iid,dirichlet:0.5,classes:9"))
        self.assertEqual(result.returncode, 1, msg=result.stdout + result.stderr[-3000:])
        self.assertIn("1 new cell(s) added", result.stdout)
        self.assertIn(
            "[cells 1/3] partition=iid__algorithm=fedavg__model=cnn__seed=0: skipped, done earlier",
            result.stdout,
        )
        self.assertRegex(result.stdout, r"\[cells 2/3\] partition=dirichlet-0\.5.*: acc \d")
        self.assertIn(
            "[cells 3/3] partition=classes-9__algorithm=fedavg__model=cnn__seed=0: FAILED",
            result.stdout,
        )
        self.assertIn("failed cells:", result.stderr)
        self.assertEqual((iid_dir / "summary.json").read_bytes(), summary)
        self.assertEqual((iid_dir / "summary.json").stat().st_mtime_ns, mtime)
        self.assertEqual((iid_dir / "log.txt").read_text(), log)  # Not even started again.
        state = self._state()
        self.assertEqual(state["iid"]["attempts"], 1)
        self.assertEqual(state["dirichlet:0.5"]["status"], "done")
        self.assertEqual(state["dirichlet:0.5"]["attempts"], 2)
        self.assertEqual(state["classes:9"]["status"], "failed")
        self.assertEqual(state["classes:9"]["exit_code"], 2)
        self.assertIn("error: ", state["classes:9"]["message"])
        self.assertIn("classes:9", state["classes:9"]["message"])
        self._assert_no_workers()

    def _report(self, iid_dir, dir_dir):
        """3. The report: one row per finished partition in grid order, values from summary.json."""
        result = _run([sys.executable, "-m", "experiments.report", f"--sweep_dir={self.dir}"])
        self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])
        table = pd.read_csv(self.dir / "report" / "table.csv", dtype=str)
        self.assertEqual(table["partition"].tolist(), ["iid", "dirichlet:0.5"])
        feds = [
            json.loads((d / "summary.json").read_text())["federated"] for d in (iid_dir, dir_dir)
        ]
        self.assertEqual(
            table["fedavg accuracy"].tolist(), [f"{f['test_accuracy']:.3f}" for f in feds]
        )
        self.assertEqual(table["fedavg AUC"].tolist(), [f"{f['test_auc']:.3f}" for f in feds])
        self.assertEqual(table["fedavg n"].tolist(), ["1", "1"])
        self.assertTrue(table["best"].isna().all())  # One seed, one algorithm: nothing compared.
        self.assertIn("only fedavg: nothing to compare", result.stdout)
        self.assertIn("no partition.csv for classes:9", result.stderr)
        for name in ("table.md", "algorithms.png", "accuracy_vs_alpha.png", "partitions/iid.png"):
            self.assertTrue((self.dir / "report" / name).is_file(), name)
        self.assertFalse((self.dir / "report" / "accuracy_vs_k.png").exists())


if __name__ == "__main__":
    absltest.main()
