"""TFF `worker_binary` processes owned by this process and reached through loopback.

A `LocalWorker` is one executor service started from the binary in the TFF
wheel. It promises never to outlive its owner or write to the owner's
terminal: its output goes to a log file or /dev/null, and Linux
`PR_SET_PDEATHSIG` kills it when the owner dies, even by SIGKILL. Each worker
carries its owner's pid in its environment (`OWNER_ENV`), so `find_workers`
can tell ours from anyone else's.

This module only starts, finds and stops processes; `tff_vision.runtime`
connects TFF contexts to them and stops them on exit. The TFF 0.87 worker has
no bind-address flag: it listens on all interfaces, unauthenticated, though we
connect only through loopback; firewall its ports where others can reach them.
"""

import os
import pathlib
import signal
import subprocess

from absl import logging

from tff_vision import childproc, devices

OWNER_ENV = "TFF_VISION_OWNER_PID"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RuntimeSetupError(RuntimeError):
    """The TFF runtime could not be started."""


def worker_binary_path() -> pathlib.Path:
    """Path of the `worker_binary` shipped inside the TFF wheel."""
    import tensorflow_federated  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(tensorflow_federated.__file__).parent / "data" / "worker_binary"
    if not path.is_file():
        raise RuntimeSetupError(f"TFF worker binary missing at {path}; reinstall with `make env`")
    return path


def check_loopback(host: str) -> None:
    """Raises ValueError unless `host` is a loopback address."""
    if host not in _LOOPBACK_HOSTS and not host.startswith("127."):
        raise ValueError(
            f"local workers are reached through loopback only, got host {host!r}; "
            "for workers on other machines use start_multi_worker_context(targets)"
        )


class LocalWorker:
    """One `worker_binary` executor service, owned by this process, reached via loopback.

    The worker dies with this process (`PR_SET_PDEATHSIG`); `stop()` ends it
    earlier, and `tff_vision.runtime.shutdown()` does so for the workers the
    runtime started.

    Args:
        max_concurrent_computation_calls: passed to the worker; nonpositive
            means no limit.
        log_path: where the worker's output goes (default: discarded).
        port: the port to serve on (default: a free one).
        host: the loopback address we connect through ("127.0.0.1", "::1" or
            "localhost"). The worker itself listens on all interfaces (see the
            module docstring).
        env: extra environment variables for the worker (e.g. TF thread
            settings).
    """

    def __init__(
        self,
        max_concurrent_computation_calls: int = -1,
        log_path: os.PathLike | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ):
        import portpicker  # pylint: disable=g-import-not-at-top

        check_loopback(host)
        self.host = host
        self.port = port or portpicker.pick_unused_port()
        args = [
            str(worker_binary_path()),
            f"--port={self.port}",
            f"--max_concurrent_computation_calls={max_concurrent_computation_calls}",
        ]
        child_env = dict(os.environ)
        # TF's C++ runtime reads this: the worker follows `devices.set_op_determinism`.
        child_env["TF_DETERMINISTIC_OPS"] = "1" if devices.op_determinism_enabled() else "0"
        # A worker on a GPU takes memory as it needs it, not the whole device up front.
        child_env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        child_env.update(env or {})
        child_env[OWNER_ENV] = str(os.getpid())
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env,
            close_fds=True,
            preexec_fn=childproc.die_with_parent(own_process_group=True),
        )
        logging.info("started TFF worker pid %d on port %d", self.process.pid, self.port)

    @property
    def target(self) -> str:
        """The `host:port` to connect to (always the loopback host)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT, then SIGKILL after `timeout` seconds; closes the log. Idempotent."""
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


def find_workers(owner_pid: int | None = None) -> list[int]:
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
