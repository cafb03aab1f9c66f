"""Tests for the tff_vision.sweep package: grid, names, commands, bookkeeping, execution.

Grid expansion, names, commands and status bookkeeping are tested directly.
The execution machinery (`sweep.Runner`) is tested against a fake
`experiments.run` (a tiny Python script given as the runner's interpreter) that
succeeds, fails, sleeps or ignores SIGINT on demand, so parallelism, failure
records, interruption and log appending are checked in seconds. The CLI,
`python -m experiments.sweep`, is tested in sweep_cli_test.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
from absl import flags
from absl.testing import absltest, parameterized

from tff_vision import interrupts, progress, sweep
from tff_vision.sweep import process, terminal

_FAKE_RUN = textwrap.dedent(
    """\
    #!{python}
    # A stand-in for `python -m experiments.run` (behaviour chosen by --algorithm), and for
    # `python -m experiments.cell_host`: the real host loop running this fake cell.
    import json, os, pathlib, signal, sys, time

    ran = []  # Cells this process ran.


    def cell(argv):
        args = dict(a[2:].split("=", 1) for a in argv)
        algorithm = args["algorithm"]
        if algorithm == "own_settings" and ran:  # As the real host refuses other settings.
            raise hosts.Refused("--mixed_precision=true differs from this host's first cell")
        ran.append(os.getpid())
        out = pathlib.Path(args["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "argv.json").write_text(json.dumps(argv))
        if algorithm == "bogus":
            print("some warning", file=sys.stderr)
            print("error: unknown --algorithm 'bogus'; use one of: fedavg", file=sys.stderr)
            sys.exit(2)
        if algorithm == "crash":
            print("Traceback (most recent call last):", file=sys.stderr)
            print("RuntimeError: boom", file=sys.stderr)
            sys.exit(1)
        keys = ("partition", "algorithm", "model", "seed")
        (out / "flags.json").write_text(json.dumps({{k: args[k] for k in keys}}))
        print("[federated] round 1/1", flush=True)
        print("a stderr line", file=sys.stderr, flush=True)
        if algorithm == "stubborn":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if algorithm in ("slow", "stubborn"):
            (out / "started").write_text("")
            try:
                time.sleep(120)
            except KeyboardInterrupt:
                sys.exit(130)
        if algorithm == "sleep":
            # A barrier, not a fixed sleep: wait (up to 30 s) until all three "sleep" cells have
            # started, which only happens when they run at the same time; robust on a loaded CPU.
            start = time.time()
            (out / "barrier").write_text("")
            while len(list(out.parent.glob("*/barrier"))) < 3 and time.time() < start + 30:
                time.sleep(0.05)
            (out / "times.json").write_text(json.dumps([start, time.time()]))
        acc = 0.5 + 0.1 * int(args["seed"])
        summary = {{
            "federated": {{"test_accuracy": acc, "test_auc": 0.7, "test_loss": 1.0, "rounds": 1}},
            "wall_seconds": 0.1,
        }}
        (out / "summary.json").write_text(json.dumps(summary))


    if sys.argv[1:3] == ["-m", "experiments.cell_host"]:
        from tff_vision.sweep import hosts

        sys.exit(hosts.serve(cell))
    assert sys.argv[1:3] == ["-m", "experiments.run"], sys.argv
    cell(sys.argv[3:])
    """
)


class ExpandGridTest(parameterized.TestCase):
    def test_product_in_seed_major_order(self):
        cells = sweep.expand_grid(
            ["iid", "dirichlet:0.1"], ["fedavg", "fedprox"], ["cnn"], ["0", "1"], {"rounds": "3"}
        )
        self.assertLen(cells, 8)
        self.assertEqual(
            [(c.seed, c.partition, c.algorithm) for c in cells[:4]],
            [
                (0, "iid", "fedavg"),
                (0, "iid", "fedprox"),
                (0, "dirichlet:0.1", "fedavg"),
                (0, "dirichlet:0.1", "fedprox"),
            ],
        )
        self.assertEqual({c.seed for c in cells[4:]}, {1})
        self.assertTrue(all(c.flags == (("rounds", "3"),) for c in cells))

    def test_specs_canonicalised_and_duplicates_dropped(self):
        cells = sweep.expand_grid(
            ["Dirichlet:0.50", "dirichlet:0.5", "iid", " classes:02"],
            ["fedavg", "fedavg"],
            ["cnn"],
            [1, "1", "01"],
            {},
        )
        self.assertEqual([c.partition for c in cells], ["dirichlet:0.5", "iid", "classes:2"])
        self.assertEqual({c.seed for c in cells}, {1})

    def test_names_are_stable_unique_and_filesystem_safe(self):
        args = (
            ["iid", "label_exclusion", "classes:2", "dirichlet:0.1", "dirichlet:1e-05"],
            ["fedavg", "a/b", "a:b", "a-b", "x__model=y"],
            ["cnn", "resnet18", "y"],
            [0, 1, 10],
            {"exclude": "1;2;3", "rounds": "2"},
        )
        names = [c.name for c in sweep.expand_grid(*args)]
        self.assertEqual(names, [c.name for c in sweep.expand_grid(*args)])
        self.assertLen(set(names), len(names))
        for name in names:
            self.assertNoCommonElements(set(name), set(":;/ \\\"'"))
        self.assertIn(
            "partition=dirichlet-0.1__algorithm=fedavg__model=cnn__seed=0",
            names,
        )
        # Fixed flags are shared by all cells and not part of the name.
        other = sweep.expand_grid(["iid"], ["fedavg"], ["cnn"], [0], {"rounds": "9"})
        self.assertIn(other[0].name, names)

    @parameterized.named_parameters(
        ("unknown_partition", ["iid", "foo:1"], {}, "foo:1"),
        ("bad_alpha", ["dirichlet:-1"], {}, "dirichlet:-1"),
        ("missing_k", ["classes"], {}, "classes"),
        ("empty_entry", ["iid", ""], {}, "empty entry"),
        ("swept_flag_fixed", ["iid"], {"partition": "iid"}, "--partitions"),
        ("output_dir_fixed", ["iid"], {"output_dir": "/tmp/x"}, "--sweep_dir"),
    )
    def test_bad_grid_raises_one_line(self, partitions, fixed, expected):
        with self.assertRaises(sweep.SweepError) as raised:
            sweep.expand_grid(partitions, ["fedavg"], ["cnn"], [0], fixed)
        message = str(raised.exception)
        self.assertIn(expected, message)
        self.assertNotIn("\n", message)

    @parameterized.parameters(([], "algorithms"), (["a", " "], "algorithms"))
    def test_empty_axis(self, algorithms, flag):
        with self.assertRaisesRegex(sweep.SweepError, flag):
            sweep.expand_grid(["iid"], algorithms, ["cnn"], [0], {})

    @parameterized.parameters("x", "-1", "1.5")
    def test_bad_seed(self, seed):
        with self.assertRaisesRegex(sweep.SweepError, "--seeds"):
            sweep.expand_grid(["iid"], ["fedavg"], ["cnn"], [seed], {})

    @parameterized.parameters(
        ({"num_clients": "4"}, "0;1;2;3"),
        ({"num_clients": "7"}, "0;1;2;3;4;0;1"),  # RetinaMNIST has 5 classes.
        ({"dataset": "breastmnist", "num_clients": "3"}, "0;1;0"),
        ({}, "0;1;2"),  # The run's default: 3 clients on RetinaMNIST.
    )
    def test_label_exclusion_gets_a_rotating_exclusion(self, fixed, expected):
        cells = sweep.expand_grid(["label_exclusion", "iid"], ["fedavg"], ["cnn"], [0], fixed)
        self.assertEqual(dict(cells[0].flags)["exclude"], expected)
        self.assertNotIn("exclude", dict(cells[1].flags))

    def test_fixed_exclude_is_used_as_given(self):
        fixed = {"exclude": "1,2;;3", "num_clients": "3"}
        cells = sweep.expand_grid(["label_exclusion", "iid"], ["fedavg"], ["cnn"], [0], fixed)
        for cell in cells:
            self.assertEqual(dict(cell.flags)["exclude"], "1,2;;3")

    def test_unknown_dataset_for_derived_exclusion(self):
        with self.assertRaisesRegex(sweep.SweepError, "nosuchmnist"):
            sweep.expand_grid(
                ["label_exclusion"], ["fedavg"], ["cnn"], [0], {"dataset": "nosuchmnist"}
            )


class CommandTest(absltest.TestCase):
    def test_argv_forwards_flags_without_quoting(self):
        cell = sweep.Cell(
            "dirichlet:0.1", "fedavg", "cnn", 2, (("exclude", "1;2;3"), ("rounds", "3"))
        )
        argv = cell.command("/s d", python="/py")
        self.assertEqual(argv[:3], ["/py", "-m", "experiments.run"])
        self.assertEqual(
            argv[3:],
            [
                "--partition=dirichlet:0.1",
                "--algorithm=fedavg",
                "--model=cnn",
                "--seed=2",
                "--exclude=1;2;3",
                "--rounds=3",
                f"--output_dir=/s d/cells/{cell.name}",
            ],
        )
        # absl parses every value back exactly, ':', ';' and the space included.
        values = flags.FlagValues()
        for name in ("partition", "algorithm", "model", "exclude", "output_dir"):
            flags.DEFINE_string(name, None, "", flag_values=values)
        for name in ("seed", "rounds"):
            flags.DEFINE_integer(name, None, "", flag_values=values)
        values(["prog", *argv[3:]])
        self.assertEqual(values.partition, "dirichlet:0.1")
        self.assertEqual(values.exclude, "1;2;3")
        self.assertEqual(values.seed, 2)
        self.assertEqual(values.output_dir, str(cell.output_dir("/s d")))
        # The log header's shell form splits back into the same argv.
        self.assertEqual(shlex.split(shlex.join(argv)), argv)

    def test_round_trip_through_dict(self):
        cell = sweep.Cell("classes:2", "fedavg", "cnn", 1, (("a", "1"), ("b", "x;y")))
        self.assertEqual(sweep.Cell.from_dict(json.loads(json.dumps(cell.to_dict()))), cell)


class StatusTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = pathlib.Path(self.create_tempdir().full_path)
        self.cell = sweep.Cell("iid", "fedavg", "cnn", 0)
        self.out = self.cell.output_dir(self.dir)

    def test_statuses_from_disk_and_record(self):
        def status(record=None):
            return sweep.disk_status(self.cell, self.dir, record)

        self.assertEqual(status(), "pending")
        self.out.mkdir(parents=True)
        (self.out / "log.txt").write_text("attempt\n")
        self.assertEqual(status(), "pending")  # A log alone means the run wrote nothing.
        self.assertEqual(status({"status": "partial"}), "partial")
        (self.out / "flags.json").write_text("{}")
        self.assertEqual(status(), "partial")
        self.assertEqual(status({"status": "failed"}), "failed")
        (self.out / "summary.json").write_text("{}")
        self.assertEqual(status(), "done")
        self.assertEqual(status({"status": "failed"}), "done")

    def test_state_merge_save_load_and_grid_change(self):
        cells = sweep.expand_grid(
            ["iid", "dirichlet:0.5"], ["fedavg"], ["cnn"], [0], {"rounds": "1"}
        )
        state = sweep.SweepState.load(self.dir)
        self.assertFalse(state.exists)
        change = state.merge({"partitions": ["iid", "dirichlet:0.5"]}, cells, {"rounds": "1"})
        self.assertTrue(change.first)
        self.assertIsNone(change.describe())
        state.save()

        loaded = sweep.SweepState.load(self.dir)
        self.assertEqual(loaded.cells(), cells)
        data = json.loads((self.dir / "sweep.json").read_text())
        self.assertEqual(data["counts"], {"done": 0, "partial": 0, "pending": 2, "failed": 0})
        self.assertEqual(data["fixed_flags"], {"rounds": "1"})

        more = sweep.expand_grid(["iid", "classes:2"], ["fedavg"], ["cnn"], [0, 1], {"rounds": "1"})
        change = loaded.merge({"partitions": ["iid", "classes:2"]}, more, {"rounds": "1"})
        self.assertLen(change.added, 3)
        self.assertEqual(change.kept, [cells[1].name])
        self.assertIn("3 new cell(s) added", change.describe())
        self.assertIn("1 cell(s) of earlier grids", change.describe())
        self.assertEqual([c.name for c in loaded.cells()], [c.name for c in cells] + change.added)
        self.assertLen(loaded.grids, 2)

    def test_changed_fixed_flags_are_refused_except_data_dir(self):
        state = sweep.SweepState(self.dir)
        state.merge({}, [self.cell], {"rounds": "1", "data_dir": "a"})
        state.check_fixed_flags({"rounds": "1", "data_dir": "b"})
        with self.assertRaisesRegex(sweep.SweepError, r"--rounds: '1' -> '2'.*new --sweep_dir"):
            state.check_fixed_flags({"rounds": "2", "data_dir": "a"})
        with self.assertRaisesRegex(sweep.SweepError, "--eval_every"):
            state.check_fixed_flags({"rounds": "1", "eval_every": "2"})

    def test_unreadable_state(self):
        (self.dir / "sweep.json").write_text("{not json")
        with self.assertRaisesRegex(sweep.SweepError, "unreadable"):
            sweep.SweepState.load(self.dir)

    def test_lock_refuses_a_second_sweep(self):
        with (
            sweep.lock_sweep_dir(self.dir),
            self.assertRaisesRegex(sweep.SweepError, f"pid {os.getpid()}"),
            sweep.lock_sweep_dir(self.dir),
        ):
            pass
        with sweep.lock_sweep_dir(self.dir):  # Released again.
            pass

    def test_format_duration(self):
        self.assertEqual(progress.format_duration(41.2), "41 s")
        self.assertEqual(progress.format_duration(185), "3m05s")
        self.assertEqual(progress.format_duration(3725), "1h02m")


class ChildSignalsTest(absltest.TestCase):
    def test_a_cell_gets_sigint_back_from_a_sweep_that_ignores_or_blocks_it(self):
        # A sweep started by a script in the background ignores SIGINT; a Ray worker blocks it.
        # Either would pass to the cell, which would then miss the first stop step.
        probe = (
            "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,"
            " signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
        )
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for preexec, expected in (
                (None, "False True"),
                (process.child_preexec(None), "True False"),
            ):
                result = subprocess.run(
                    [sys.executable, "-c", probe],
                    preexec_fn=preexec,  # noqa: PLW1509
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                self.assertEqual(result.stdout.strip(), expected)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            signal.signal(signal.SIGINT, previous)


class AttemptTest(parameterized.TestCase):
    """How an attempt's exit becomes its status and message, and the ETA of the rest."""

    @parameterized.parameters(
        (0, True, False, "", ("done", "")),
        (0, False, False, "", ("failed", "exited 0 without writing summary.json")),
        (2, False, False, "error: bad", ("failed", "exit 2: error: bad")),
        (-signal.SIGKILL, False, False, "", ("failed", "killed by SIGKILL")),
        (-99, False, False, "", ("failed", "killed by signal 99")),
        (130, False, True, "", ("partial", "interrupted")),
        (-signal.SIGTERM, False, True, "x", ("partial", "interrupted")),
        (128 + signal.SIGTERM, False, True, "x", ("partial", "interrupted")),  # Its clean stop.
        (1, False, True, "boom", ("failed", "exit 1: boom")),  # Failed before the stop.
    )
    def test_attempt_status(self, code, finished, interrupted, last_line, expected):
        result = sweep.CellResult(sweep.Cell("iid", "fedavg", "cnn", 0), code, 1.0, last_line)
        self.assertEqual(sweep.attempt_status(result, finished, interrupted), expected)

    def test_eta(self):
        # Mean 10 s x 4 cells left, less 4 s already run, over 2 at a time: 18 s.
        self.assertEqual(terminal.eta([8.0, 12.0], 4, [4.0], 2), "18 s")
        self.assertEqual(terminal.eta([10.0], 2, [30.0], 1), "10 s")  # At most one mean spent.
        self.assertEqual(terminal.eta([125.0], 3, [], 1), "6m15s")
        self.assertEqual(terminal.eta([], 3, [], 1), "")
        self.assertEqual(terminal.eta([10.0], 0, [], 1), "")

    def test_grid_axes_in_first_seen_order(self):
        cells = sweep.expand_grid(["iid", "classes:2"], ["b", "a"], ["cnn"], [1, 0], {})
        self.assertEqual(
            sweep.grid_axes(cells),
            {
                "partitions": ["iid", "classes:2"],
                "algorithms": ["b", "a"],
                "models": ["cnn"],
                "seeds": [1, 0],
            },
        )


class RunnerTest(parameterized.TestCase):
    """`sweep.Runner` with a fake experiments.run: real subprocesses, no TensorFlow.

    Every test runs twice: with a fresh process per cell, and (`ResidentRunnerTest`)
    with resident cell hosts, the fake cell inside the real host loop (`hosts.serve`).
    """

    cell_processes = "fresh"

    def setUp(self):
        super().setUp()
        self.dir = pathlib.Path(self.create_tempdir().full_path)
        self.fake = self.dir / "fake_run.py"
        self.fake.write_text(_FAKE_RUN.format(python=sys.executable))
        self.fake.chmod(0o755)
        self.lines = []

    def _runner(self, cells, max_parallel=1, **kwargs):
        state = sweep.SweepState.load(self.dir)
        state.merge({}, cells, {})
        state.save()
        launcher = sweep.LocalLauncher(
            self.dir,
            python=str(self.fake),
            max_parallel=max_parallel,
            cell_processes=self.cell_processes,
        )
        return sweep.Runner(
            state,
            cells,
            printer=self.lines.append,
            error_printer=self.lines.append,
            launcher=launcher,
            **kwargs,
        )

    def _records(self):
        data = json.loads((self.dir / "sweep.json").read_text())
        return {r["algorithm"]: r for r in data["cells"]}

    def test_failures_recorded_others_run_and_rerun_skips_done(self):
        cells = sweep.expand_grid(
            ["dirichlet:0.1"], ["fedavg", "bogus", "crash"], ["cnn"], [0], {"exclude": "1;2;3"}
        )
        outcome = self._runner(cells).run()
        self.assertEqual(outcome.exit_code, 1)
        self.assertLen(outcome.ran, 1)
        self.assertLen(outcome.failed, 2)
        records = self._records()
        self.assertEqual(records["fedavg"]["status"], "done")
        self.assertEqual(records["fedavg"]["test_accuracy"], 0.5)
        self.assertEqual(records["bogus"]["status"], "failed")
        self.assertEqual(records["bogus"]["exit_code"], 2)
        # The error line wins over later or earlier stderr noise.
        self.assertEqual(
            records["bogus"]["message"],
            "exit 2: error: unknown --algorithm 'bogus'; use one of: fedavg",
        )
        self.assertEqual(records["crash"]["message"], "exit 1: RuntimeError: boom")
        pids = {records[a]["pid"] for a in ("fedavg", "bogus", "crash")}
        # Resident: one host ran all three (a cell exiting 2 leaves its host serving).
        self.assertLen(pids, 1 if self.cell_processes == "resident" else 3)
        self.assertRegex(
            self.lines[0],
            r"^\[cells 1/3\] partition=dirichlet-0\.1__algorithm=fedavg.*: "
            r"acc 0\.500 auc 0\.700 \(\d+ s\)  ETA \d+ s$",
        )
        self.assertIn("[cells 2/3]", self.lines[1])
        self.assertIn("FAILED (exit 2: error: unknown --algorithm", self.lines[1])
        # The argv reached the run intact.
        argv = json.loads((cells[0].output_dir(self.dir) / "argv.json").read_text())
        self.assertIn("--partition=dirichlet:0.1", argv)
        self.assertIn("--exclude=1;2;3", argv)
        # stdout and stderr of the cell are in its log.
        log = (cells[0].output_dir(self.dir) / "log.txt").read_text()
        self.assertIn("[federated] round 1/1", log)
        self.assertIn("a stderr line", log)
        done_summary = cells[0].output_dir(self.dir) / "summary.json"
        mtime = done_summary.stat().st_mtime_ns

        self.lines.clear()
        outcome = self._runner(cells).run()
        self.assertEqual(outcome.exit_code, 1)
        self.assertEqual(outcome.skipped, [cells[0].name])
        self.assertIn("skipped, done earlier (acc 0.500 auc 0.700)", self.lines[0])
        self.assertEqual(done_summary.stat().st_mtime_ns, mtime)
        records = self._records()
        self.assertEqual(records["fedavg"]["attempts"], 1)
        self.assertEqual(records["bogus"]["attempts"], 2)
        self.assertEqual(log, (cells[0].output_dir(self.dir) / "log.txt").read_text())
        bogus_log = (cells[1].output_dir(self.dir) / "log.txt").read_text()
        self.assertEqual(bogus_log.count("attempt: "), 2)  # Appended, not overwritten.

        lines = sweep.summary_lines(sweep.SweepState.load(self.dir), cells, outcome, 3.0)
        self.assertIn("3 cells: 1 done (1 skipped), 2 failed, 0 partial, 0 pending", lines[0])
        self.assertIn("failed cells:", lines)
        dry = sweep.describe(sweep.SweepState.load(self.dir), cells)
        self.assertEqual([line.split()[0] for line in dry], ["done", "failed", "failed"])

    def test_max_parallel_runs_cells_concurrently(self):
        cells = sweep.expand_grid(["iid"], ["sleep"], ["cnn"], [0, 1, 2], {})
        outcome = self._runner(cells, max_parallel=3).run()
        self.assertEqual(outcome.exit_code, 0, msg=self.lines)
        spans = [json.loads((c.output_dir(self.dir) / "times.json").read_text()) for c in cells]
        latest_start = max(start for start, _ in spans)
        earliest_end = min(end for _, end in spans)
        self.assertLess(latest_start, earliest_end, "the three cells never ran at the same time")

    @parameterized.parameters((signal.SIGINT, 130), (signal.SIGTERM, 143))
    def test_interrupt_stops_cells_records_partial(self, stop, exit_code):
        cells = sweep.expand_grid(["iid"], ["slow", "stubborn", "fedavg"], ["cnn"], [0], {})
        runner = self._runner(
            cells, max_parallel=2, stop_steps=((signal.SIGINT, 1.0), (signal.SIGTERM, 5.0))
        )
        started = [c.output_dir(self.dir) / "started" for c in cells[:2]]
        pids = []

        def interrupt():
            deadline = time.monotonic() + 30
            while not all(p.exists() for p in started) and time.monotonic() < deadline:
                time.sleep(0.02)
            pids.extend(runner.running_pids())
            os.kill(os.getpid(), stop)  # KeyboardInterrupt in the runner's thread.

        thread = threading.Thread(target=interrupt)
        thread.start()
        outcome = runner.run()
        thread.join()
        self.assertEqual(outcome.exit_code, exit_code)
        self.assertTrue(outcome.stopped)
        interrupts.raise_if_interrupted()  # The stop was handled: a later run is not stopped.
        self.assertLen(pids, 2)
        self.assertFalse([p for p in pids if psutil.pid_exists(p)])  # Stopped and reaped.
        records = self._records()
        self.assertEqual(records["slow"]["status"], "partial")
        self.assertEqual(records["slow"]["exit_code"], 130)  # Clean exit on SIGINT.
        self.assertEqual(records["stubborn"]["status"], "partial")
        self.assertEqual(records["stubborn"]["exit_code"], -signal.SIGTERM)  # Escalated.
        self.assertEqual(records["fedavg"]["status"], "pending")  # Never started.
        self.assertFalse(cells[2].output_dir(self.dir).exists())
        self.assertTrue(any(line.startswith("interrupted: stopping 2") for line in self.lines))

    def test_killed_cell_fails_alone_and_the_next_runs(self):
        cells = sweep.expand_grid(["iid"], ["slow", "fedavg", "own_settings"], ["cnn"], [0], {})
        runner = self._runner(cells)
        started = cells[0].output_dir(self.dir) / "started"
        killed = []

        def kill():
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            killed.extend(runner.running_pids())
            os.kill(killed[0], signal.SIGKILL)  # The cell's process (resident: its host).

        thread = threading.Thread(target=kill)
        thread.start()
        outcome = runner.run()
        thread.join()
        self.assertEqual(outcome.exit_code, 1, msg=self.lines)
        records = self._records()
        self.assertEqual(records["slow"]["status"], "failed")
        self.assertEqual(records["slow"]["exit_code"], -signal.SIGKILL)
        self.assertStartsWith(records["slow"]["message"], "killed by SIGKILL: ")
        self.assertEqual(records["slow"]["pid"], killed[0])
        self.assertEqual(records["fedavg"]["status"], "done")
        self.assertNotEqual(records["fedavg"]["pid"], killed[0])
        # Resident: a cell the host refuses (other process-wide settings) runs in a new host.
        self.assertEqual(records["own_settings"]["status"], "done")
        if self.cell_processes == "resident":
            self.assertNotEqual(records["own_settings"]["pid"], records["fedavg"]["pid"])
        pids = [r["pid"] for r in records.values()]
        self.assertFalse([p for p in pids if psutil.pid_exists(p)])  # Ended and reaped.


class ResidentRunnerTest(RunnerTest):
    cell_processes = "resident"


if __name__ == "__main__":
    absltest.main()
