"""The benchmark harness on its smallest configuration: structure, not timings."""

import json
import os
import pathlib
import subprocess
import sys

from absl.testing import absltest

from experiments import benchmarking
from tff_vision import runtime

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED = _ROOT.parent / "shared" / "medmnist"


def _smallest(**overrides):
    values = dict(
        suites=("overhead", "workers"),
        data_dir=str(_SHARED),
        overhead_models=("cnn",),
        overhead_clients=(3,),
        overhead_rounds=2,
        overhead_examples=192,
        workers_counts=(2,),
        workers_clients=3,
        workers_rounds=1,
        workers_examples=96,
    )
    values.update(overrides)
    return benchmarking.BenchmarkConfig.quick(**values)


def _target_holds(row: benchmarking.Row) -> bool:
    """Whether `row`'s target holds, worked out from its suite's own numbers.

    Independent of the harness's `met`: overhead rows hold when the ratio is at most
    1.15, memory rows when the RSS grew by under 5% between the two sampled rounds
    (recomputed from `rss_bytes`), workers rows when the largest one-round weight
    difference is at most 1e-6.
    """
    if row.suite == "overhead":
        return row.ratio is not None and row.ratio <= 1.15
    if row.suite == "memory":
        early, late = (str(r) for r in row.details["rounds"])
        rss = row.details["rss_bytes"]
        first, last = (v["total"] if isinstance(v, dict) else v for v in (rss[early], rss[late]))
        return (last - first) / first < 0.05
    if row.suite == "workers":
        return max(row.details["one_round_max_abs_weight_difference"]) <= 1e-6
    raise AssertionError(f"no rule for suite {row.suite!r}")


_TARGETS = {
    "overhead": "<= 1.15",
    "memory": "growth < 5%",
    "workers": "one-round max|dw| <= 1e-6 (ratio: time n/1, info)",
    "run_memory": "peak <= 2.5 GB, same results",
}


class BenchmarkTest(absltest.TestCase):
    def assertMetComputed(self, row: benchmarking.Row) -> None:
        """`row.target` is its suite's, and `row.met` is "yes" exactly when the target holds."""
        self.assertEqual(row.target, _TARGETS[row.suite], msg=row)
        self.assertEqual(row.met, "yes" if _target_holds(row) else "no", msg=row)

    def tearDown(self):
        runtime.shutdown()
        super().tearDown()

    def test_smallest_run_table_and_json(self):
        lines = []
        result = benchmarking.run(_smallest(), printer=lines.append)
        self.assertTrue(lines)
        self.assertEqual([r.suite for r in result.rows], ["overhead", "workers"])
        for row in result.rows:
            self.assertEqual(row.data, "real")  # Both suites train on the shared RetinaMNIST.
            self.assertMetComputed(row)
            self.assertGreater(row.ratio, 0)
            self.assertTrue(row.values)
        overhead, workers = result.rows
        details = overhead.details
        self.assertLen(details["round_seconds"], 2)
        self.assertLen(details["epoch_seconds"], 2)
        self.assertTrue(all(s > 0 for s in details["round_seconds"] + details["epoch_seconds"]))
        self.assertEqual(details["num_examples"], 192)
        self.assertEqual(details["num_clients"], 3)
        self.assertAlmostEqual(
            overhead.ratio, details["steady_round_seconds"] / details["steady_epoch_seconds"]
        )
        self.assertEqual(workers.details["workers"], 2)
        self.assertLen(workers.details["one_round_max_abs_weight_difference"], 1)
        self.assertLessEqual(max(workers.details["one_round_max_abs_weight_difference"]), 1e-6)
        self.assertLessEqual(workers.details["final_max_abs_weight_difference"], 1e-6)
        self.assertEqual(workers.met, "yes")
        self.assertTrue(all(s > 0 for s in details["round_cpu_seconds"]))
        self.assertEqual(runtime.find_workers(os.getpid()), [])

        frame = result.frame()
        self.assertEqual(list(frame.columns), list(benchmarking.COLUMNS))
        self.assertLen(frame, 2)
        table = result.table()
        for column in benchmarking.COLUMNS:
            self.assertIn(column, table)

        path = pathlib.Path(self.create_tempdir().full_path) / "bench.json"
        result.write_json(path)
        saved = json.loads(path.read_text())
        self.assertEqual(saved["columns"], list(benchmarking.COLUMNS))
        self.assertLen(saved["rows"], 2)
        self.assertEqual(saved["config"]["suites"], ["overhead", "workers"])
        self.assertEqual(saved["meta"]["cpu_count"], os.cpu_count())
        self.assertGreater(saved["meta"]["seconds"], 0)
        self.assertEqual(set(saved["meta"]["suite_seconds"]), {"overhead", "workers"})

    def test_memory_suite_restarts_the_worker(self):
        config = _smallest(
            suites=("memory",),
            memory_rounds=(2, 5),
            memory_restart_every=2,
            memory_clients=2,
            examples_per_client=16,
        )
        result = benchmarking.run(config, printer=lambda line: None)
        memory, datasets_only = result.rows
        self.assertEqual((memory.suite, datasets_only.suite), ("memory", "memory"))
        for row in result.rows:
            self.assertEqual(row.data, "synthetic")
            self.assertMetComputed(row)
            early, late = (str(r) for r in row.details["rounds"])
            rss = {
                k: v["total"] if isinstance(v, dict) else v
                for k, v in row.details["rss_bytes"].items()
            }
            self.assertAlmostEqual(row.ratio, rss[late] / rss[early])
            self.assertAlmostEqual(row.details["growth"], rss[late] / rss[early] - 1)
        details = memory.details
        self.assertEqual(details["restarts_after_rounds"], [2, 4])
        self.assertEqual(details["worker_rounds_at_late"], 1)  # Round 5 ran on a fresh worker.
        self.assertIsNone(details["workers_bytes_per_round"])  # Not one worker from 2 to 5.
        self.assertGreaterEqual(details["peak_rss_bytes"], details["rss_bytes"]["2"]["total"])
        self.assertLen(details["round_seconds"], 5)
        self.assertIn("worker restarted every 2 rounds", memory.values)
        self.assertEqual(runtime.find_workers(os.getpid()), [])

    def test_run_memory_measures_the_run_and_its_workers(self):
        # A 1-round CNN version of the reference run, this tree as its own "before": both
        # runs must give the same results, and the worker's memory must be counted.
        config = _smallest(
            suites=("run_memory",),
            memory_run_rounds=1,
            memory_run_flags=("--model=cnn", "--num_clients=2", "--exclude=1;2"),
            memory_baseline_tree=str(_ROOT),
        )
        (row,) = benchmarking.run(config, printer=lambda line: None).rows
        self.assertEqual((row.suite, row.data), ("run_memory", "real"))
        after, before = row.details["after"], row.details["before"]
        for peak in (after, before):
            self.assertEqual(peak["total"], peak["own"] + peak["workers"])
            self.assertGreater(peak["own"], 300e6)  # A Python process with TF imported.
            self.assertGreater(peak["workers"], 20e6)  # A worker_binary that served a round.
        self.assertTrue(row.details["results_identical"])
        self.assertIn("results identical", row.values)
        self.assertAlmostEqual(row.ratio, after["total"] / before["total"])
        self.assertEqual(row.met, "yes" if after["total"] <= 2.5e9 else "no")
        self.assertIn("--model=cnn", row.setting)

    def test_helpers_and_validation(self):
        self.assertEqual(benchmarking.steady_seconds([5.0]), 5.0)
        self.assertEqual(benchmarking.steady_seconds([9.0, 1.0, 3.0, 2.0]), 2.0)
        rss = benchmarking.process_tree_rss()
        self.assertGreater(rss["self"], 0)
        self.assertEqual(rss["total"], rss["self"] + rss["workers"])
        with self.assertRaisesRegex(ValueError, "unknown suite"):
            _smallest(suites=("speed",)).validate()
        with self.assertRaisesRegex(ValueError, "memory_rounds"):
            _smallest(memory_rounds=(5, 5)).validate()
        with self.assertRaisesRegex(ValueError, "memory_restart_every"):
            _smallest(memory_restart_every=-1).validate()
        with self.assertRaisesRegex(ValueError, "workers_clients"):
            _smallest(workers_counts=(4,), workers_clients=3).validate()
        quick, full = benchmarking.BenchmarkConfig.quick(), benchmarking.BenchmarkConfig.full()
        self.assertLess(quick.memory_rounds[1], full.memory_rounds[1])
        self.assertEqual(full.memory_rounds, (20, 200))
        row = benchmarking.Row.ratio_at_most(
            1.15, suite="s", setting="x", data="real", values="v", ratio=None, details={}
        )
        self.assertEqual((row.target, row.met), ("<= 1.15", "no"))
        # `met` on both sides of each target, the limit itself included.
        for value, met in ((1.15, "yes"), (0.5, "yes"), (1.1501, "no"), (3.0, "no")):
            row = benchmarking.Row.ratio_at_most(
                1.15, suite="s", setting="x", data="real", values="v", ratio=value, details={}
            )
            self.assertEqual(row.met, met, msg=value)
        for first, last, met in ((100, 104.9, "yes"), (100, 60, "yes"), (100, 105, "no")):
            row = benchmarking.Row.growth_below_5_percent(
                first, last, suite="s", setting="x", data="synthetic", values="v", details={}
            )
            self.assertEqual((row.met, row.ratio), (met, last / first), msg=(first, last))
        row = benchmarking.Row.growth_below_5_percent(
            100, 104, suite="s", setting="x", data="synthetic", values="v", details={}
        )
        self.assertEqual((row.target, row.met, row.ratio), ("growth < 5%", "yes", 1.04))
        env = benchmarking.BenchmarkConfig(worker_threads=2).worker_env()
        self.assertEqual(env["TF_NUM_INTRAOP_THREADS"], "2")

    def test_runner_rejects_bad_flags(self):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.benchmark", "--suites=speed"],
            cwd=_ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertIn("error: unknown suite", proc.stderr)


if __name__ == "__main__":
    absltest.main()
