"""Tests for resident cell hosts (`experiments.cell_host`) on real RetinaMNIST.

One sweep of five one-round cells runs through `sweep.Runner` with resident
hosts: a cell that builds its process, a cell with bad input (exit 2, the host
serves on), a cell that reuses the first one's build (other seed and
partition; its results must equal a fresh `python -m experiments.run` of the
same cell), a cell whose host is killed mid-cell (failed; nothing left
behind) and a last cell, which a new host runs. The launcher itself is tested
without TensorFlow in sweep_test.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import threading
import time

import fl_testing
import psutil
import run_testing
from absl.testing import absltest

from experiments.benchmarking import measure
from tff_vision import config as config_lib
from tff_vision import federated_stage, process_cache, runtime, sweep

_FIXED = {
    "dataset": "retinamnist",
    "data_dir": str(fl_testing.SHARED_MEDMNIST),
    "num_clients": "3",
    "rounds": "1",
    "local_epochs": "1",
    "client_lr": "0.003",
    "proximal_strength": "0.01",
}


def _cell(partition: str, algorithm: str, seed: int) -> sweep.Cell:
    (cell,) = sweep.expand_grid([partition], [algorithm], ["cnn"], [seed], _FIXED)
    return cell


class ResidentSweepTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        if not (fl_testing.SHARED_MEDMNIST / "retinamnist.npz").exists():
            self.skipTest("real RetinaMNIST not present")
        self.dir = pathlib.Path(self.create_tempdir().full_path)

    def test_cells_share_a_host_and_give_their_fresh_results(self):
        cells = [
            _cell("iid", "fedavg", 0),  # Builds FedAvg's process.
            _cell("classes:9", "fedavg", 0),  # Bad input: 5 classes < 9.
            _cell("dirichlet:0.5", "fedavg", 1),  # Reuses the build.
            _cell("iid", "fedprox", 0),  # Its host is killed while it builds.
            _cell("iid", "fedavg", 1),  # A new host.
        ]
        state = sweep.SweepState.load(self.dir)
        state.merge({}, cells, {})
        launcher = sweep.LocalLauncher(self.dir, python=sys.executable, cell_processes="resident")
        runner = sweep.Runner(state, cells, printer=print, launcher=launcher)
        killed = []
        thread = threading.Thread(target=self._kill_host_of, args=(runner, cells[3], killed))
        thread.start()
        outcome = runner.run()
        thread.join()
        self.assertEqual(outcome.exit_code, 1)
        records = {r["name"]: r for r in json.loads((self.dir / "sweep.json").read_text())["cells"]}
        first, bad, reused, dead, last = (records[c.name] for c in cells)
        self.assertEqual([first["status"], reused["status"], last["status"]], ["done"] * 3)
        self.assertEqual(bad["status"], "failed")
        self.assertEqual(bad["exit_code"], 2)
        self.assertIn("error: ", bad["message"])
        self.assertIn("classes:9", bad["message"])
        self.assertEqual(dead["status"], "failed")
        self.assertEqual(dead["exit_code"], -signal.SIGKILL)
        self.assertEqual({first["pid"], bad["pid"], reused["pid"], dead["pid"]}, {killed[0]})
        self.assertNotEqual(last["pid"], killed[0])
        for pid in (killed[0], last["pid"]):
            self.assertFalse(psutil.pid_exists(pid))  # Reaped, with no worker left behind.
            self.assertEqual(runtime.find_workers(owner_pid=pid), [])
        fresh = self.dir / "fresh"
        result = run_testing.run_runner(*cells[2].command(fresh)[3:])
        self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])
        self.assertEqual(
            measure.run_results(cells[2].output_dir(self.dir)),
            measure.run_results(cells[2].output_dir(fresh)),
        )

    def _kill_host_of(self, runner: sweep.Runner, cell: sweep.Cell, killed: list[int]) -> None:
        """SIGKILLs the host running `cell` once the cell has started writing."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            pids = runner.running_pids()
            if pids and (cell.output_dir(self.dir) / "flags.json").exists():
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)
                return
            time.sleep(0.02)


class ProcessKeyTest(absltest.TestCase):
    """`federated_stage.process_key`: shared across seeds and partitions, not across settings."""

    def _key(self, **settings):
        values = {**fl_testing.RETINA_LABEL_EXCLUSION, "output_dir": "/tmp/x", **settings}
        return federated_stage.process_key(config_lib.config_from_dict(values), "spec")

    def test_seed_partition_and_dir_do_not_change_the_key(self):
        self.assertEqual(
            self._key(seed=0),
            self._key(seed=3, partition="dirichlet:0.5", exclude="", output_dir="/tmp/y"),
        )
        self.assertNotEqual(self._key(), self._key(algorithm="fedprox", proximal_strength=0.1))
        self.assertNotEqual(self._key(), self._key(client_lr=0.01))
        self.assertNotEqual(self._key(), self._key(model="resnet18"))
        # DP noise is seeded from --seed and lives in the aggregator's state.
        dp = dict(aggregator="dp", dp_noise_multiplier=0.5, dp_clip="1.0")
        self.assertNotEqual(self._key(seed=0, **dp), self._key(seed=1, **dp))

    def test_cache_is_off_by_default_and_reuses_by_key(self):
        self.assertFalse(process_cache.enabled())
        builds = []
        self.assertEqual(process_cache.get_or_build("k", lambda: builds.append(1) or 1), 1)
        self.assertEqual(process_cache.get_or_build("k", lambda: builds.append(2) or 2), 2)
        process_cache.enable(capacity=1)
        try:
            self.assertEqual(process_cache.get_or_build("k", lambda: 3), 3)
            self.assertEqual(process_cache.get_or_build("k", lambda: 4), 3)
            self.assertEqual(process_cache.get_or_build("other", lambda: 5), 5)
            self.assertEqual(process_cache.get_or_build("k", lambda: 6), 6)  # Capacity 1.
        finally:
            process_cache.disable()


if __name__ == "__main__":
    absltest.main()
