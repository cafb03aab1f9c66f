"""Process hygiene: no TFF worker_binary outlives its owner, on any exit path."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import psutil
from absl.testing import absltest

from tff_vision import devices, interrupts, runtime

_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import tensorflow_federated as tff
    from tff_vision import runtime
    runtime.start_local_context()

    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def mean(x):
        return tff.federated_mean(x)

    print('mean', mean([1.0, 2.0, 6.0]), flush=True)
    mode = sys.argv[1]
    if mode == 'raise':
        raise RuntimeError('boom')
    if mode == 'hang':
        print('ready', flush=True)
        time.sleep(600)
    """
)


def _wait_gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _relays(owner_pid):
    """PIDs of live network relays (`tff_vision.loopback`) of the workers of `owner_pid`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE or len(cmdline) < 4:
            continue
        if cmdline[-4].endswith("loopback.py") and cmdline[-1] == str(owner_pid):
            found.append(proc.info["pid"])
    return found


def _namespaces_available():
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


class WorkerCleanupTest(absltest.TestCase):
    def _run(self, mode):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        return subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )

    def test_normal_exit_and_error_exit_do_not_hang_pipe(self):
        for mode, expected_rc in (("ok", 0), ("raise", 1)):
            proc = self._run(mode)
            # With TFF's stock context this communicate() hangs: the orphaned
            # worker keeps the pipe open.
            out, err = proc.communicate(timeout=240)
            self.assertEqual(proc.returncode, expected_rc, err[-2000:])
            self.assertIn("mean 3.0", out)
            self.assertEqual(runtime.find_workers(owner_pid=proc.pid), [])
            self.assertEqual(_relays(proc.pid), [])

    def _kill_while_running(self, sig):
        proc = self._run("hang")
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if "ready" in line or time.monotonic() > deadline:
                break
        workers = runtime.find_workers(owner_pid=proc.pid)
        self.assertLen(workers, 1)
        relays = _relays(proc.pid)
        self.assertLen(relays, 1 if _namespaces_available() else 0)  # See listener_test.
        sockets = [psutil.Process(pid).cmdline()[-3] for pid in relays]
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        self.assertEqual(_wait_gone(workers + relays), [])
        for path in sockets:
            self.assertFalse(os.path.exists(os.path.dirname(path)), path)

    def test_sigkill_of_parent_ends_worker(self):
        self._kill_while_running(signal.SIGKILL)

    def test_sigterm_ends_worker(self):
        self._kill_while_running(signal.SIGTERM)

    def test_ctrl_c_ends_worker(self):
        self._kill_while_running(signal.SIGINT)


class ShutdownTest(absltest.TestCase):
    def test_calls_after_shutdown_fail_instead_of_waiting_for_the_worker(self):
        import numpy as np  # pylint: disable=g-import-not-at-top
        import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

        @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
        def mean(x):
            return tff.federated_mean(x)

        with runtime.local_context():
            self.assertAlmostEqual(mean([1.0, 2.0]), 1.5)
        with self.assertRaisesRegex(RuntimeError, "No default context"):
            mean([1.0, 2.0])


_SWALLOWED_INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from tff_vision import interrupts
    if sys.argv[1] == 'guard':
        interrupts.install_interrupt_guard()

    class Finalized:
        def __del__(self):
            # Ctrl-C while Python runs a finalizer (as with JAX's gc callback): the
            # KeyboardInterrupt is printed as "Exception ignored" and dropped.
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100000):
                pass

    Finalized()
    print('still running', flush=True)
    try:
        interrupts.raise_if_interrupted()
    except KeyboardInterrupt:
        print('interrupt raised', flush=True)
    interrupts.raise_if_interrupted()  # Once only.
    print('end', flush=True)
    """
)


class InterruptGuardTest(absltest.TestCase):
    def _run(self, mode):
        return subprocess.run(
            [sys.executable, "-c", _SWALLOWED_INTERRUPT_SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def test_swallowed_ctrl_c_is_raised_at_the_next_check(self):
        result = self._run("guard")
        self.assertIn("KeyboardInterrupt", result.stderr)  # Python's "Exception ignored".
        self.assertEqual(result.stdout.split(), ["still", "running", "interrupt", "raised", "end"])

    def test_without_the_guard_nothing_is_raised(self):
        result = self._run("none")
        self.assertIn("KeyboardInterrupt", result.stderr)
        self.assertEqual(result.stdout.split(), ["still", "running", "end"])


class StopSignalsTest(absltest.TestCase):
    """`signals_interrupt`: SIGTERM stops as Ctrl-C does; an ignored SIGHUP (nohup) stays so."""

    def test_sigterm_raises_keyboard_interrupt_and_is_remembered(self):
        before = signal.getsignal(signal.SIGTERM)
        with self.assertRaises(KeyboardInterrupt):
            with interrupts.signals_interrupt():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # The handler raises before this ends.
        self.assertEqual(interrupts.stop_signal(), signal.SIGTERM)  # Exit status 143.
        with self.assertRaises(KeyboardInterrupt):  # The flag, for a swallowed one.
            interrupts.raise_if_interrupted()
        self.assertEqual(signal.getsignal(signal.SIGTERM), before)
        interrupts.install_interrupt_guard()  # As the next run starts: a Ctrl-C is presumed.
        self.assertEqual(interrupts.stop_signal(), signal.SIGINT)

    def test_an_ignored_signal_stays_ignored(self):
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            with interrupts.signals_interrupt():
                self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.1)
            self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)
        finally:
            signal.signal(signal.SIGHUP, previous)


class RestartTest(absltest.TestCase):
    def tearDown(self):
        runtime.shutdown()
        super().tearDown()

    def _mean(self):
        import numpy as np  # pylint: disable=g-import-not-at-top
        import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

        @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
        def mean(x):
            return tff.federated_mean(x)

        return mean

    def test_local_context_gets_a_fresh_worker_with_the_same_settings(self):
        mean = self._mean()
        old = runtime.start_local_context(env={"TFF_VISION_TEST_SETTING": "kept"})
        self.assertAlmostEqual(mean([1.0, 2.0]), 1.5)
        self.assertTrue(runtime.restart_local_workers())
        self.assertFalse(old.alive())
        self.assertEqual(_wait_gone([old.process.pid]), [])
        (new,) = runtime.find_workers(os.getpid())
        self.assertNotEqual(new, old.process.pid)
        self.assertEqual(psutil.Process(new).environ()["TFF_VISION_TEST_SETTING"], "kept")
        self.assertAlmostEqual(mean([1.0, 5.0]), 3.0)

    def test_worker_grows_gpu_memory_on_demand_and_keeps_two_heap_arenas(self):
        worker = runtime.start_local_context()
        environ = psutil.Process(worker.process.pid).environ()
        self.assertEqual(environ["TF_FORCE_GPU_ALLOW_GROWTH"], "true")
        self.assertEqual(environ["MALLOC_ARENA_MAX"], "2")

    def test_the_callers_heap_setting_wins(self):
        worker = runtime.start_local_context(env={"MALLOC_ARENA_MAX": "4"})
        self.assertEqual(psutil.Process(worker.process.pid).environ()["MALLOC_ARENA_MAX"], "4")

    def test_multi_worker_context_restarts_all_workers(self):
        mean = self._mean()
        old = runtime.start_local_multi_worker_context(2)
        self.assertAlmostEqual(mean([1.0, 2.0, 3.0, 6.0]), 3.0)
        self.assertTrue(runtime.restart_local_workers())
        self.assertEqual(_wait_gone([w.process.pid for w in old]), [])
        self.assertLen(runtime.find_workers(os.getpid()), 2)
        self.assertAlmostEqual(mean([1.0, 2.0, 3.0, 6.0]), 3.0)

    def test_nothing_to_restart_without_a_context_of_ours(self):
        self.assertFalse(runtime.restart_local_workers())
        (worker,) = runtime.start_local_workers(1)
        runtime.start_multi_worker_context([worker.target])  # Targets given: not ours to restart.
        self.assertFalse(runtime.restart_local_workers())
        self.assertTrue(worker.alive())


class OpDeterminismTest(absltest.TestCase):
    """`set_op_determinism` sets this process and the workers started after it alike."""

    def tearDown(self):
        runtime.shutdown()
        devices.set_op_determinism("auto")
        super().tearDown()

    def _worker_setting(self) -> str:
        worker = runtime.LocalWorker()
        try:
            return psutil.Process(worker.process.pid).environ()["TF_DETERMINISTIC_OPS"]
        finally:
            worker.stop()

    def test_on_and_off_reach_this_process_and_the_worker(self):
        from tensorflow.python.framework import config  # pylint: disable=g-import-not-at-top

        for mode, enabled, env_value in (("on", True, "1"), ("off", False, "0")):
            with self.subTest(mode):
                self.assertEqual(devices.set_op_determinism(mode), enabled)
                self.assertEqual(config.is_op_determinism_enabled(), enabled)
                self.assertEqual(self._worker_setting(), env_value)

    def test_auto_follows_the_gpu(self):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
        self.assertEqual(devices.set_op_determinism("auto"), has_gpu)

    def test_unknown_mode_is_refused(self):
        with self.assertRaisesRegex(ValueError, "auto, on, off"):
            devices.set_op_determinism("always")


class DeviceDescriptionTest(absltest.TestCase):
    """Summaries name the hardware: oneDNN's kernels, hence the last bits, follow the CPU."""

    _CPUINFO = (
        "processor\t: 0\nmodel name\t: Example Xeon\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Example Xeon\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16\n"
    )

    def test_names_the_model_and_the_instruction_sets_that_pick_kernels(self):
        self.assertEqual(
            devices.cpu_description(self._CPUINFO), "Example Xeon, avx2 avx512f amx_bf16"
        )
        self.assertEqual(
            devices.cpu_description("model name : Old\nflags : fpu sse2\n"), "Old, no avx2"
        )

    def test_without_cpuinfo_the_features_are_said_unknown(self):
        self.assertEndsWith(devices.cpu_description(""), ", instruction sets unknown")

    def test_this_machine_is_described_in_the_device_string(self):
        description = devices.configure_devices(verbose=False)
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        if not tf.config.list_physical_devices("GPU"):
            self.assertEqual(
                description, f"CPU ({os.cpu_count()} cores: {devices.cpu_description()})"
            )
            if pathlib.Path("/proc/cpuinfo").exists():
                self.assertNotIn("unknown", description)


if __name__ == "__main__":
    absltest.main()
