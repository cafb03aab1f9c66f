"""A private network for a local TFF worker: a namespace of its own, reached by a Unix socket.

TFF 0.87's `worker_binary` serves unauthenticated gRPC on all interfaces and has no
bind-address flag. A `PrivateLoopback` gives it a network namespace whose only interface is
`lo`, so nothing outside the namespace can connect to its port, and lets this user alone in:
a relay accepts on a Unix socket (mode 0600 in a 0700 directory) and connects to the worker's
port inside the namespace. gRPC clients reach it as `unix:<path>`.

The relay is this file run as a script (stdlib only, no TensorFlow). It creates the
namespaces (an unprivileged user namespace mapping this user to itself, and a network
namespace with `lo` up), answers `ready` or why the OS refused, then relays bytes. The worker
joins its namespaces before exec (`PrivateLoopback.joining`). The relay dies with its owner
(parent-death SIGTERM), removing its socket and directory.

Set `TFF_VISION_WORKER_NETNS=off` to refuse the namespace as an OS without unprivileged user
namespaces would (callers then fall back to an exposed worker, with a warning).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

DISABLE_ENV = "TFF_VISION_WORKER_NETNS"
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sh22x"  # struct ifreq: interface name, then ifr_flags in the union.
_CHUNK = 1 << 20
_SOCKET_NAME = "worker.sock"


class Refused(OSError):
    """The OS refused a private network namespace (or `TFF_VISION_WORKER_NETNS=off`)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6", use_errno=True)


class PrivateLoopback:
    """A relay process that holds a private network namespace, and the Unix socket into it.

    Args:
        port: the TCP port the worker will serve on inside the namespace.
        stderr: where the relay's own messages go (a file or `subprocess.DEVNULL`).
        timeout: seconds to wait for the relay to set up.

    Raises:
        Refused: the OS refused the namespaces; nothing is left running.
        OSError: the relay failed otherwise.
    """

    def __init__(self, port: int, *, stderr=subprocess.DEVNULL, timeout: float = 30.0):
        self.port = port
        self._dir = _socket_dir()
        self.socket_path = os.path.join(self._dir, _SOCKET_NAME)
        self._libc = _libc()  # Loaded here: `joining`'s preexec may not load libraries.
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)]
            + [self.socket_path, str(port), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,  # A terminal's Ctrl-C is for the owner, which stops us.
        )
        try:
            status = _read_line(self.process.stdout, timeout)
        except BaseException:
            self.stop()
            raise
        self.process.stdout.close()
        if status != "ready":
            self.stop()
            kind, _, reason = status.partition(" ")
            if kind == "refused":
                raise Refused(reason)
            raise OSError(f"worker network relay failed: {status or 'no answer'}")

    @property
    def target(self) -> str:
        """The gRPC target of the worker: `unix:<socket path>`."""
        return f"unix:{self.socket_path}"

    def alive(self) -> bool:
        return self.process.poll() is None

    @contextlib.contextmanager
    def joining(self, then: Callable[[], None] | None = None) -> Iterator[Callable[[], None]]:
        """A `preexec_fn` that runs `then`, then moves the child into our namespaces.

        Use the callable only inside the `with` block: it holds the namespace files open.
        """
        fds = [
            os.open(f"/proc/{self.process.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            for name in ("user", "net")
        ]
        libc = self._libc

        def preexec() -> None:  # Runs in the child between fork and exec.
            if then is not None:
                then()
            for fd, kind in zip(fds, (_CLONE_NEWUSER, _CLONE_NEWNET)):
                if libc.setns(fd, kind) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the worker's namespace failed")

        try:
            yield preexec
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the relay (SIGTERM, then SIGKILL) and removes its socket. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def _socket_dir() -> str:
    """A fresh 0700 directory with room for a Unix socket path (108 bytes at most)."""
    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    return tempfile.mkdtemp(prefix="tff-vision-worker-", dir=base)


def _read_line(stream, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


# The relay process (this file run as a script).


def _enter_private_network(libc: ctypes.CDLL) -> None:
    """Moves this (single-threaded) process into new user and network namespaces, `lo` up."""
    if os.environ.get(DISABLE_ENV, "").lower() in ("0", "off", "false", "no"):
        raise Refused(f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise Refused(errno, f"unprivileged network namespace refused: {os.strerror(errno)}")
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError as e:
        raise Refused(f"user namespace id mapping refused: {e}") from e
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack(_IFREQ, fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags[1] | _IFF_UP))


def _connect(port: int, timeout: float) -> socket.socket | None:
    """A connection to the worker's port, retried while the worker starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            upstream = socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
            continue
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return upstream


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copies `src` to `dst` until EOF; on an error ends both directions of both."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _relay(client: socket.socket, port: int) -> None:
    with client:
        upstream = _connect(port, timeout=60.0)
        if upstream is None:
            return
        with upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()


def _listen(socket_path: str, owner: int) -> socket.socket | None:
    """Enters the private network and binds the socket; None (and why, on stdout) if not."""
    try:
        _enter_private_network(_libc())
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != owner:
            return None  # The owner is already gone.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.umask(0o177)  # The socket file: 0600, this user only.
        listener.bind(socket_path)
        listener.listen(16)
        return listener
    except Refused as e:
        print("refused", e.strerror or e, flush=True)
    except Exception as e:  # pylint: disable=broad-except
        print("error", repr(e), flush=True)
    return None


def _main(socket_path: str, port: int, owner: int) -> None:
    """Relays until the first stop signal, then removes the socket's directory, whatever happened.

    The parent-death signal comes once per exiting thread of a multi-threaded owner (the kernel
    reparents us to each surviving thread in turn), so only the first signal stops us: a later
    one must neither interrupt the cleanup nor, once Python's finalization restores default
    handlers, end the process by the signal.
    """
    stopping = False

    def on_signal(signum, frame):  # pylint: disable=unused-argument
        nonlocal stopping
        if not stopping:
            stopping = True
            for other in signals:  # Ignored, not default: finalization keeps SIG_IGN.
                signal.signal(other, signal.SIG_IGN)
            raise SystemExit(0)

    signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    for signum in signals:
        signal.signal(signum, on_signal)
    try:
        listener = _listen(socket_path, owner)
        if listener is None:
            return
        print("ready", flush=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        while True:
            client, _ = listener.accept()
            threading.Thread(target=_relay, args=(client, port), daemon=True).start()
    finally:
        shutil.rmtree(os.path.dirname(socket_path), ignore_errors=True)


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
