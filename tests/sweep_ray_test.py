"""`experiments.sweep --launcher=ray` on a real two-node Ray cluster, and its one-line errors.

Both nodes are `ray start` processes on this host, each in a session of its
own with small resources, this test's own temp dir and free ports. Killing a
node's process group is what a machine failure does to a cluster; teardown
kills every process group the test started (`ray stop` would stop every Ray
cluster on the host, other tests' included). The cells are the tiniest real
runs: the small CNN, 2 rounds, 2 hospitals of real BreastMNIST.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import portpicker
import psutil
import run_testing
from absl.testing import absltest

from tff_vision import runtime

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED = _ROOT.parent / "shared" / "medmnist"
_RAY = pathlib.Path(sys.executable).with_name("ray")
_IP = "127.0.0.1"
_NODE_PORT_FLAGS = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
)
_HEAD_PORT_FLAGS = ("--port", "--ray-client-server-port", "--dashboard-port")


def _env():
    return dict(run_testing.runner_env(), RAY_USAGE_STATS_ENABLED="0")


def _sweep_command(sweep_dir, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.sweep",
        f"--sweep_dir={sweep_dir}",
        "--algorithms=fedavg",
        "--models=cnn",
        "--dataset=breastmnist",
        f"--data_dir={_SHARED}",
        "--num_clients=2",
        "--rounds=2",
        "--local_epochs=1",
        *extra,
    ]


def _run(command, timeout=240):
    return run_testing.run_command(command, env=_env(), timeout=timeout)


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Cluster:
    """Ray nodes started on this host by `ray start`, each in its own process group."""

    def __init__(self, temp_dir: str):
        self.temp_dir = temp_dir
        self.pgids: list[int] = []
        self.address = ""
        self.taken: set[int] = set()

    def _free_ports(self, count: int) -> list[int]:
        """`count` consecutive ports, free now and disjoint from those this cluster took."""
        for _ in range(100):
            first = portpicker.pick_unused_port()
            ports = list(range(first, first + count))
            if ports[-1] < 65536 and self.taken.isdisjoint(ports):
                if all(portpicker.is_port_free(port) for port in ports[1:]):
                    self.taken.update(ports)
                    return ports
        raise AssertionError(f"found no {count} free consecutive ports")

    def start_node(self, **resources) -> int:
        """Starts the head (first call) or a node joining it; returns its process group."""
        command = [
            str(_RAY),
            "start",
            f"--node-ip-address={_IP}",
            f"--temp-dir={self.temp_dir}",
            "--object-store-memory=80000000",
            "--disable-usage-stats",
            *[f"--{k.replace('_', '-')}={v}" for k, v in resources.items()],
        ]
        port_flags = _NODE_PORT_FLAGS
        if self.address:
            command.append(f"--address={self.address}")
        else:
            command += ["--head", "--include-dashboard=false"]
            port_flags += _HEAD_PORT_FLAGS
        # Ray refuses a node whose worker range holds one of its other ports: the
        # range is chosen first, each port then outside every range and port taken.
        workers = self._free_ports(count=41)
        ports = {flag: self._free_ports(count=1)[0] for flag in port_flags}
        command += [f"{flag}={port}" for flag, port in ports.items()]
        command += [f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[-1]}"]
        proc = subprocess.Popen(  # Its nodes' daemons keep its process group.
            command,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pgids.append(proc.pid)
        output, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"ray start failed:\n{output[-3000:]}")
        if not self.address:
            self.address = f"{_IP}:{ports['--port']}"
        return proc.pid

    def processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: in its process groups or naming its temp dir."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                in_group = os.getpgid(proc.pid) in self.pgids
            except OSError:
                continue
            named = self.temp_dir in " ".join(proc.info["cmdline"] or [])
            if (in_group or named) and _live(proc):
                found.append(proc)
        return found

    def kill_node(self, pgid: int) -> None:
        os.killpg(pgid, signal.SIGKILL)

    def teardown(self) -> None:
        """SIGTERM to every node's process group, SIGKILL to whatever is left after 10 s."""
        for signum, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            for proc in self.processes():
                try:
                    os.killpg(os.getpgid(proc.pid), signum)
                except OSError:
                    pass
            deadline = time.monotonic() + grace
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)


def _cell_runs(sweep_dir: pathlib.Path) -> dict[int, pathlib.Path]:
    """The cells' runs now alive, by pid: their --output_dir."""
    runs = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "experiments.run" not in cmdline or not _live(proc):
            continue
        for arg in cmdline:
            if arg.startswith(f"--output_dir={sweep_dir}/"):
                runs[proc.pid] = pathlib.Path(arg.split("=", 1)[1])
    return runs


def _parent_pgid(pid: int) -> int | None:
    try:
        return os.getpgid(psutil.Process(pid).ppid())
    except (OSError, psutil.NoSuchProcess):
        return None


def _records(sweep_dir: pathlib.Path) -> dict[str, dict]:
    try:
        data = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    return {r["name"]: r for r in data["cells"]}


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            stdout, stderr = proc.communicate()
            raise AssertionError(
                f"the sweep ended (exit {proc.returncode}) before {what}:\n{stdout}{stderr[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RayClusterTest(absltest.TestCase):
    """A 4-cell sweep on two Ray nodes: one dies mid-cell; Ctrl-C; reruns; the local numbers."""

    def setUp(self):
        super().setUp()
        if not _RAY.exists():
            self.skipTest(f"Ray is not installed ({_RAY} missing)")
        if not (_SHARED / "breastmnist.npz").exists():
            self.skipTest(f"real MedMNIST file {_SHARED / 'breastmnist.npz'} not present")
        # Short: Ray's unix socket paths live under it.
        self.temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.temp_dir], check=False)
        self.cluster = _Cluster(self.temp_dir)
        self.addCleanup(self.cluster.teardown)
        self.cluster.start_node(num_cpus=1)
        self.second = self.cluster.start_node(num_cpus=1)
        self.sweep_dir = pathlib.Path(self.temp_dir) / "sweep"
        self.command = _sweep_command(
            self.sweep_dir,
            "--partitions=iid,dirichlet:0.5",
            "--seeds=0,1",
            "--launcher=ray",
            f"--ray_address={self.cluster.address}",
        )

    def _start_sweep(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            self.command,
            cwd=_ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc

    def test_node_death_ctrl_c_and_reruns_match_the_local_launcher(self):
        victim = self._lose_a_cell_with_its_node()
        self._interrupt_its_rerun(victim)
        self._finish_and_compare_with_local(victim)
        for record in _records(self.sweep_dir).values():
            self.assertEqual(runtime.find_workers(owner_pid=record["pid"]), [])
        self.cluster.teardown()
        self.assertEqual(self.cluster.processes(), [])
        self.assertEqual(_cell_runs(self.sweep_dir), {})

    def _lose_a_cell_with_its_node(self) -> pathlib.Path:
        """1. The second node is killed while its cell runs: that cell fails, the others finish."""
        proc = self._start_sweep()

        def started_on_second():
            for pid, out in _cell_runs(self.sweep_dir).items():
                if _parent_pgid(pid) == self.second and (out / "flags.json").exists():
                    return out
            return None

        victim = _wait_for(started_on_second, 150, "a cell on the second node", proc)
        self.cluster.kill_node(self.second)
        self.cluster.start_node(num_cpus=1)  # A fresh node joins; the sweep uses it too.
        stdout, stderr = proc.communicate(timeout=240)
        self.assertEqual(proc.returncode, 1, msg=stdout + stderr[-3000:])
        self.assertIn("4 cells, as Ray tasks on", stdout)
        self.assertRegex(
            stdout,
            rf"\[cells \d/4\] {victim.name}: FAILED \(its Ray task ended without an exit "
            r"status \(NodeDiedError: ",
        )
        self.assertRegex(stdout, r"\[cells \d/4\] \S+: acc \d\.\d{3} auc \d\.\d{3} \([^)]+\)")
        self.assertRegex(stdout, r"\[cells [1-3]/4\] .*  ETA \d+ s\n")
        records = _records(self.sweep_dir)
        record = records[victim.name]
        self.assertEqual((record["status"], record["exit_code"]), ("failed", None))
        self.assertIn("NodeDiedError", record["message"])
        # Cells Ray had already queued on the dead node are lost with it, and recorded so.
        failed = [r for r in records.values() if r["status"] == "failed"]
        for lost in failed:
            self.assertRegex(lost["message"], r"(NodeDied|RayletDied)Error", msg=lost)
        self.assertIn(f"{4 - len(failed)} done (0 skipped), {len(failed)} failed", stderr)
        self.lost = len(failed)
        return victim

    def _interrupt_its_rerun(self, victim: pathlib.Path) -> None:
        """2. Ctrl-C while the rerun runs the failed cell: recorded partial, no run left."""
        proc = self._start_sweep()
        _wait_for(lambda: victim in _cell_runs(self.sweep_dir).values(), 120, "its rerun", proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 130, msg=stdout + stderr[-3000:])
        self.assertRegex(
            stdout, rf"\[cells \d/4\] {victim.name}: interrupted after .*, left partial"
        )
        self.assertRegex(stderr, r"interrupted: stopping \d unfinished cell\(s\) on Ray")
        record = _records(self.sweep_dir)[victim.name]
        self.assertEqual((record["status"], record["attempts"]), ("partial", 2), msg=record)
        self.assertEqual(_cell_runs(self.sweep_dir), {})

    def _finish_and_compare_with_local(self, victim: pathlib.Path) -> None:
        """3. A rerun completes every cell; the lost cell equals the local launcher's run of it."""
        record = _records(self.sweep_dir)[victim.name]
        local_dir = pathlib.Path(self.temp_dir) / "local"
        local = subprocess.Popen(  # The lost cell and one that ran straight through on Ray.
            _sweep_command(
                local_dir, f"--partitions={record['partition']}", "--seeds=0,1", "--max_parallel=2"
            ),
            cwd=_ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(lambda: local.poll() is None and (local.kill(), local.wait()))
        rerun = _run(self.command)
        self.assertEqual(rerun.returncode, 0, msg=rerun.stdout + rerun.stderr[-3000:])
        self.assertEqual(rerun.stdout.count("skipped, done earlier"), 4 - self.lost, rerun.stdout)
        records = _records(self.sweep_dir)
        self.assertEqual({r["status"] for r in records.values()}, {"done"}, msg=records)
        self.assertEqual(records[victim.name]["attempts"], 3)
        stdout, stderr = local.communicate(timeout=240)
        self.assertEqual(local.returncode, 0, msg=stdout + stderr[-3000:])
        local_records = _records(local_dir)
        for name, local_record in local_records.items():
            ray_summary = json.loads((self.sweep_dir / "cells" / name / "summary.json").read_text())
            local_summary = json.loads((local_dir / "cells" / name / "summary.json").read_text())
            self.assertEqual(ray_summary["federated"], local_summary["federated"], msg=name)
            self.assertEqual(local_record["test_auc"], records[name]["test_auc"], msg=name)


class RayFlagsTest(absltest.TestCase):
    """Bad launcher flags and an unreachable cluster: one line, exit 2, nothing written."""

    def test_one_line_errors(self):
        sweep_dir = pathlib.Path(self.create_tempdir().full_path) / "s"
        free = portpicker.pick_unused_port()
        for extra, expected in (
            (["--launcher=ray", f"--ray_address=127.0.0.1:{free}"], "cannot reach a Ray cluster"),
            (["--launcher=ray", "--max_parallel=2"], "--max_parallel applies to --launcher=local"),
            (["--cell_gpus=0.5"], "--cell_gpus applies to --launcher=ray only"),
        ):
            result = _run(_sweep_command(sweep_dir, "--partitions=iid", *extra), timeout=120)
            self.assertEqual(result.returncode, 2, msg=result.stderr[-2000:])
            lines = result.stderr.strip().splitlines()
            self.assertLen(lines, 1, msg=result.stderr)
            self.assertStartsWith(lines[0], "error: ")
            self.assertIn(expected, lines[0])
            self.assertFalse(sweep_dir.exists())


if __name__ == "__main__":
    absltest.main()
