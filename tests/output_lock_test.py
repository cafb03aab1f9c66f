"""One process at a time in an output directory: `tff_vision.dirlock` and the runner's use of it.

The lock is tested across real processes (a holder killed with SIGKILL frees
it), and end to end: a second `python -m experiments.run` on the directory of
a running one stops with one line naming the directory and the first run's
PID, and the first run finishes with every round.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import run_testing
from absl.testing import absltest

from tff_vision import dirlock

_HOLDER = textwrap.dedent(
    """\
    import sys, time
    from tff_vision import dirlock
    lock = dirlock.DirectoryLock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
    """
)


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class DirectoryLockTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path

    def test_second_holder_in_this_process_is_refused_until_release(self):
        lock = dirlock.DirectoryLock(self.dir)
        with self.assertRaises(dirlock.DirectoryLocked) as refused:
            dirlock.DirectoryLock(self.dir)
        self.assertEqual(refused.exception.pid, str(os.getpid()))
        lock.release()
        with dirlock.DirectoryLock(self.dir):  # Free again.
            pass

    def test_lock_of_a_killed_process_is_free(self):
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, self.dir],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(run_testing.ROOT)),
        )
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline().strip(), "locked")
        with self.assertRaises(dirlock.DirectoryLocked) as refused:
            dirlock.DirectoryLock(self.dir)
        self.assertEqual(refused.exception.pid, str(holder.pid))
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
        with dirlock.DirectoryLock(self.dir) as lock:
            self.assertEqual(lock.path.read_text().strip(), str(os.getpid()))


class SecondRunTest(run_testing.RunnerTestCase):
    def test_second_run_on_a_running_dir_stops_and_the_first_loses_nothing(self):
        out = self.tmp / "shared_out"
        flags = run_testing.runner_flags(rounds=3, client_lr=0.05, output_dir=out)
        first = run_testing.start_runner(
            *flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.addCleanup(first.kill)
        self.addCleanup(first.send_signal, signal.SIGCONT)  # Never leave it stopped.
        _wait_for(lambda: (out / "flags.json").exists() or first.poll() is not None, 300, "start")
        # Stopped while it holds the lock, so that the second run surely meets it running.
        first.send_signal(signal.SIGSTOP)
        second = run_testing.run_runner(*flags, timeout=300)
        first.send_signal(signal.SIGCONT)
        self.assertOneLineError(second, f"--output_dir={out} is in use by another run")
        self.assertIn(f"(pid {first.pid})", second.stderr)
        _, stderr = first.communicate(timeout=600)
        self.assertFinished(subprocess.CompletedProcess([], first.returncode, "", stderr), out)
        metrics = pd.read_csv(out / "metrics.csv")
        self.assertEqual(metrics["round"].tolist(), [1, 2, 3])


if __name__ == "__main__":
    absltest.main()
