"""TFF execution contexts, devices and process cleanup.

TFF's stock local C++ context starts a `worker_binary` subprocess that inherits
the parent's stdout/stderr and is only stopped by a `__del__` that often never
runs: the worker outlives Python and any pipeline reading the parent's output
hangs. This module starts the worker itself and makes sure it ends:

* its stdout/stderr go to a log file (or /dev/null), never to the parent's;
* Linux `PR_SET_PDEATHSIG` kills it when the parent dies, even by SIGKILL;
* `atexit`, SIGTERM/SIGHUP handlers and `shutdown()` stop it on normal exit,
  exceptions and Ctrl-C.

The TFF context is assembled from TFF's own public pieces
(`tff.framework.RemoteExecutor` over a gRPC stub, a
`ResourceManagingExecutorFactory` and a `SyncExecutionContext` with the native
compiler), which is exactly what `tff.backends.native.
set_sync_local_cpp_execution_context` builds, minus the unmanaged process.
"""

import atexit
import contextlib
import ctypes
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, Optional

from absl import logging

OWNER_ENV = "TFF_VISION_OWNER_PID"
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ("grpc.max_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE_BYTES),
]
_PR_SET_PDEATHSIG = 1

_workers: list["LocalWorker"] = []
_lock = threading.Lock()
_hooks_installed = False


class RuntimeSetupError(RuntimeError):
    """The TFF runtime could not be started."""


def worker_binary_path() -> pathlib.Path:
    """Path of the `worker_binary` shipped inside the TFF wheel."""
    import tensorflow_federated  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(tensorflow_federated.__file__).parent / "data" / "worker_binary"
    if not path.is_file():
        raise RuntimeSetupError(f"TFF worker binary missing at {path}; reinstall with `make env`")
    return path


def _die_with_parent() -> None:  # Runs in the child between fork and exec.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    # Own process group: a Ctrl-C in the terminal reaches only Python, which
    # then stops the worker itself, in order.
    os.setpgid(0, 0)


class LocalWorker:
    """One `worker_binary` executor service on 127.0.0.1, owned by this process."""

    def __init__(
        self,
        max_concurrent_computation_calls: int = -1,
        log_path: Optional[os.PathLike] = None,
        port: Optional[int] = None,
    ):
        import portpicker  # pylint: disable=g-import-not-at-top

        self.port = port or portpicker.pick_unused_port()
        args = [
            str(worker_binary_path()),
            f"--port={self.port}",
            f"--max_concurrent_computation_calls={max_concurrent_computation_calls}",
        ]
        env = dict(os.environ)
        env[OWNER_ENV] = str(os.getpid())
        # TF's C++ runtime reads this: deterministic kernels where they exist.
        env.setdefault("TF_DETERMINISTIC_OPS", "1")
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            preexec_fn=_die_with_parent,
        )
        logging.info("started TFF worker pid %d on port %d", self.process.pid, self.port)

    @property
    def target(self) -> str:
        # The worker_binary listens on all interfaces (TFF 0.87 has no bind
        # flag); we only ever connect through loopback.
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGINT)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            except ProcessLookupError:
                pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL


def _make_stub(target: str, worker: Optional[LocalWorker] = None, timeout: float = 60.0):
    import grpc  # pylint: disable=g-import-not-at-top
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    channel = grpc.insecure_channel(target, _GRPC_OPTIONS)
    stub = tff.framework.RemoteExecutorGrpcStub(channel)
    deadline = time.monotonic() + timeout
    while not stub.is_ready:
        if worker is not None and not worker.alive():
            raise RuntimeSetupError(
                f"TFF worker on {target} exited with status {worker.process.returncode}"
            )
        if time.monotonic() > deadline:
            raise RuntimeSetupError(
                f"no TFF executor service answered at {target} in {timeout:.0f}s"
            )
        time.sleep(0.1)
    return stub


def _executor_factory(stub, default_num_clients: int = 0):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    def stack_fn(cardinalities):
        cardinalities = dict(cardinalities)
        if cardinalities.get(tff.CLIENTS) is None:
            cardinalities[tff.CLIENTS] = default_num_clients
        executor = tff.framework.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    return tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn)


def _install_exit_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(shutdown)
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame):  # pylint: disable=unused-argument
        shutdown()
        # Re-raise as the default action would, after cleanup.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, on_signal)


def start_local_context(
    max_concurrent_computation_calls: int = -1,
    log_path: Optional[os.PathLike] = None,
    default_num_clients: int = 0,
) -> LocalWorker:
    """Starts a managed local worker and installs it as TFF's default context.

    Args:
      max_concurrent_computation_calls: passed to the worker; nonpositive means
        no limit.
      log_path: where the worker's output goes (default: discarded).
      default_num_clients: CLIENTS cardinality when it cannot be inferred.

    Returns:
      The `LocalWorker`; `shutdown()` (also run at exit) stops it.
    """
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

    _install_exit_hooks()
    worker = LocalWorker(max_concurrent_computation_calls, log_path)
    with _lock:
        _workers.append(worker)
    stub = _make_stub(worker.target, worker)
    context = tff.framework.SyncExecutionContext(
        executor_fn=_executor_factory(stub, default_num_clients),
        compiler_fn=tff.backends.native.desugar_and_transform_to_native,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )
    tff.framework.set_default_context(context)
    return worker


def shutdown() -> None:
    """Stops every worker this process started. Safe to call repeatedly."""
    with _lock:
        workers = list(_workers)
        _workers.clear()
    for worker in workers:
        worker.stop()


@contextlib.contextmanager
def local_context(**kwargs) -> Iterator[LocalWorker]:
    """Context manager form of `start_local_context` that always shuts down."""
    try:
        yield start_local_context(**kwargs)
    finally:
        shutdown()


def find_workers(owner_pid: Optional[int] = None) -> list[int]:
    """PIDs of live `worker_binary` processes started by tff-vision.

    Args:
      owner_pid: only those started by this process id; None for any owner.
    """
    import psutil  # pylint: disable=g-import-not-at-top

    found = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        try:
            if proc.info["name"] != "worker_binary" or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            owner = proc.environ().get(OWNER_ENV)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if owner is not None and (owner_pid is None or owner == str(owner_pid)):
            found.append(proc.info["pid"])
    return found


def configure_devices(verbose: bool = True) -> str:
    """Enables GPU memory growth when a GPU is present; returns a description."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # Already initialized.
            pass
    description = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"
    if verbose:
        logging.info("devices: %s", description)
    return description


def quiet_tensorflow() -> None:
    """Silences TF's C++ info logs; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def stderr_is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
