"""TFF `worker_binary` processes owned by this process, reachable by this user alone.

A `LocalWorker` is one executor service started from the binary in the TFF
wheel. It promises never to outlive its owner or write to the owner's
terminal: its output goes to a log file or /dev/null, and Linux
`PR_SET_PDEATHSIG` kills it when the owner dies, even by SIGKILL. Each worker
carries its owner's pid in its environment (`OWNER_ENV`), so `find_workers`
can tell ours from anyone else's.

The TFF 0.87 worker serves unauthenticated gRPC on all interfaces and has no
bind-address flag, so it runs in a network namespace of its own whose only
interface is loopback, reached through a Unix socket only this user can open
(`tff_vision.loopback`). Where the OS refuses unprivileged namespaces, the
worker runs as before, exposed on all interfaces, with a warning saying so.

This module only starts, finds and stops processes; `tff_vision.runtime`
connects TFF contexts to them and stops them on exit.
"""

import contextlib
import os
import pathlib
import signal
import subprocess

from absl import logging

from tff_vision import childproc, devices, loopback

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
    """One `worker_binary` executor service, owned by this process, reachable by this user alone.

    The worker serves inside a private network namespace (see the module
    docstring) and `target` is the Unix socket into it; where the OS refuses
    the namespace, it listens on all interfaces as TFF made it and `target` is
    `host:port`, with a one-line warning. It dies with this process
    (`PR_SET_PDEATHSIG`); `stop()` ends it earlier, and
    `tff_vision.runtime.shutdown()` does so for the workers the runtime started.

    Args:
        max_concurrent_computation_calls: passed to the worker; nonpositive
            means no limit.
        log_path: where the worker's output goes (default: discarded).
        port: the port to serve on (default: a free one).
        host: the loopback address to connect through if the worker cannot
            have a network of its own ("127.0.0.1", "::1" or "localhost").
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
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.loopback = None
        try:
            self.loopback = self._private_loopback()
            self.process = self._start(args, _worker_env(env))
        except BaseException:
            self.stop()
            raise
        where = self.loopback.target if self.loopback else f"all interfaces, port {self.port}"
        logging.info("started TFF worker pid %d on %s", self.process.pid, where)

    def _private_loopback(self) -> loopback.PrivateLoopback | None:
        """The worker's private network, or None (and the warning) where the OS refuses it."""
        try:
            return loopback.PrivateLoopback(self.port, stderr=self._log)
        except loopback.Refused as e:
            logging.warning(
                "TFF worker NOT network-isolated (%s): it listens on all interfaces, port %d "
                "([::]:%d), unauthenticated; anyone who can reach this machine on that port "
                "can run TensorFlow as you. Firewall it, or allow unprivileged user namespaces.",
                e.strerror or e,
                self.port,
                self.port,
            )
            return None

    def _start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        preexec = childproc.die_with_parent(own_process_group=True)
        joining = self.loopback.joining(preexec) if self.loopback else None
        with joining or contextlib.nullcontext(preexec) as preexec_fn:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                preexec_fn=preexec_fn,
            )

    @property
    def target(self) -> str:
        """The gRPC target: `unix:<socket>` of the private network, else the loopback host."""
        if self.loopback is not None:
            return self.loopback.target
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def alive(self) -> bool:
        """Whether the worker (and its relay, if any) still runs."""
        relay_alive = self.loopback is None or self.loopback.alive()
        return self.process.poll() is None and relay_alive

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT, then SIGKILL after `timeout` seconds; ends the relay, closes the log.

        Idempotent.
        """
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                process.send_signal(signal.SIGINT)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass
        if self.loopback is not None:
            self.loopback.stop()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL


def _worker_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The worker's environment: ours, 2 heap arenas, determinism, GPU growth, `extra`, owner."""
    env = dict(os.environ)
    # glibc gives every thread that allocates at once a heap arena of its own (up to 8 per
    # core) and keeps what is freed in it; the worker's many TF threads so hold hundreds of MB
    # of freed tensors. Two arenas cost it no measurable speed and bound that.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    # TF's C++ runtime reads this: the worker follows `devices.set_op_determinism`.
    env["TF_DETERMINISTIC_OPS"] = "1" if devices.op_determinism_enabled() else "0"
    # A worker on a GPU takes memory as it needs it, not the whole device up front.
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    env.update(extra or {})
    env[OWNER_ENV] = str(os.getpid())
    return env


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
