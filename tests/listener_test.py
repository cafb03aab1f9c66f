"""The local TFF worker accepts no connection from other hosts (or warns that it does)."""

import contextlib
import fcntl
import ipaddress
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
from unittest import mock

import numpy as np
import tensorflow_federated as tff
from absl.testing import absltest

from tff_vision import loopback, runtime

_LISTEN = "0A"
_WARNING = "NOT network-isolated"


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def _listening(net_dir: str = "/proc/net") -> list[tuple]:
    """(address, port, inode) of every LISTEN socket in the network namespace of `net_dir`."""
    found = []
    for name in ("tcp", "tcp6"):
        with open(os.path.join(net_dir, name)) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, port = fields[1].split(":")
                if fields[3] == _LISTEN:
                    found.append((_address(address), int(port, 16), int(fields[9])))
    return found


def _is_loopback(address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _exposed(worker) -> list[tuple]:
    """The worker's LISTEN sockets on a non-loopback address of this host's network."""
    inodes = _socket_inodes(worker.process.pid)
    return [
        entry
        for entry in _listening()
        if (entry[1] == worker.port or entry[2] in inodes) and not _is_loopback(entry[0])
    ]


def _interfaces(net_dir: str) -> list[str]:
    with open(os.path.join(net_dir, "dev")) as f:
        return [line.split(":")[0].strip() for line in f.readlines()[2:]]


def _host_addresses() -> list[str]:
    """Every IPv4 address of this host's interfaces, and its global IPv6 addresses."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in _interfaces("/proc/net"):
            with contextlib.suppress(OSError):  # Interfaces without an IPv4 address.
                ifreq = fcntl.ioctl(s, 0x8915, struct.pack("256s", name.encode()[:15]))
                found.append(socket.inet_ntoa(ifreq[20:24]))  # SIOCGIFADDR
    with open("/proc/net/if_inet6") as f:
        for line in f:
            fields = line.split()
            if fields[3] == "00":  # Global scope.
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return found


def _namespaces_available() -> bool:
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _mean(x):
    return tff.federated_mean(x)


class PrivateNetworkTest(absltest.TestCase):
    def tearDown(self):
        runtime.shutdown()
        super().tearDown()

    def _assert_private(self, worker):
        """Nothing on this host's network reaches `worker`, which does serve in its own."""
        pid = worker.process.pid
        self.assertEqual(_exposed(worker), [])  # TFF's own worker: [(IPv6Address('::'), port, _)]
        self.assertIsNotNone(worker.loopback)
        self.assertNotIn(worker.port, [port for _, port, _ in _listening()])
        self.assertNotEqual(os.readlink(f"/proc/{pid}/ns/net"), os.readlink("/proc/self/ns/net"))
        self.assertEqual(_interfaces(f"/proc/{pid}/net"), ["lo"])
        self.assertIn(worker.port, [port for _, port, _ in _listening(f"/proc/{pid}/net")])
        addresses = _host_addresses() + ["127.0.0.1"]
        self.assertGreater(len(addresses), 1, addresses)
        for address in addresses:
            with self.assertRaises(OSError, msg=address):
                socket.create_connection((address, worker.port), timeout=2).close()
        path = worker.target.removeprefix("unix:")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

    def _assert_stopped(self, worker):
        deadline = time.monotonic() + 10
        while worker.loopback.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(worker.alive())
        self.assertFalse(worker.loopback.alive())
        self.assertFalse(os.path.exists(os.path.dirname(worker.loopback.socket_path)))

    def test_relay_removes_its_socket_however_many_stop_signals_come(self):
        # A multi-threaded owner killed by SIGKILL sends the parent-death SIGTERM once per
        # exiting thread; a later one used to interrupt the relay's cleanup and leave the socket.
        if not _namespaces_available():
            self.skipTest("this OS refuses unprivileged network namespaces")
        for _ in range(5):
            relay = loopback.PrivateLoopback(port=1)
            self.addCleanup(relay.stop)
            for _ in range(300):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(relay.process.pid, signal.SIGTERM)
            self.assertEqual(relay.process.wait(timeout=30), 0)
            self.assertFalse(os.path.exists(os.path.dirname(relay.socket_path)))

    def test_local_worker_listens_on_no_host_address(self):
        if not _namespaces_available():
            with self.assertLogs(level="WARNING") as logs:
                worker = runtime.start_local_context()
            self.assertIn(f"port {worker.port}", "\n".join(logs.output))
            self.skipTest("this OS refuses unprivileged network namespaces: fallback warned")
        worker = runtime.start_local_context()
        self.assertEqual(_mean([1.0, 2.0, 6.0]), 3.0)  # A real computation while we look.
        self._assert_private(worker)
        self.assertTrue(runtime.restart_local_workers())
        self._assert_stopped(worker)
        (fresh,) = runtime._workers  # pylint: disable=protected-access
        self.assertEqual(_mean([1.0, 5.0]), 3.0)
        self._assert_private(fresh)
        runtime.shutdown()
        self._assert_stopped(fresh)

    def test_every_local_worker_of_a_multi_worker_context_is_private(self):
        if not _namespaces_available():
            self.skipTest("this OS refuses unprivileged network namespaces")
        workers = runtime.start_local_multi_worker_context(2)
        self.assertEqual(_mean([1.0, 2.0, 3.0, 6.0]), 3.0)
        for worker in workers:
            self._assert_private(worker)
        self.assertNotEqual(workers[0].target, workers[1].target)
        runtime.shutdown()
        for worker in workers:
            self._assert_stopped(worker)


class FallbackTest(absltest.TestCase):
    """Where the namespace is refused, the worker runs as TFF made it, and says so."""

    def tearDown(self):
        runtime.shutdown()
        super().tearDown()

    def test_refusal_warns_in_one_line_and_the_worker_still_serves(self):
        with mock.patch.dict(os.environ, {loopback.DISABLE_ENV: "off"}):
            with self.assertLogs(level="WARNING") as logs:
                worker = runtime.start_local_context()
        (line,) = [message for message in logs.output if _WARNING in message]
        self.assertNotIn("\n", line)
        self.assertIn(f"all interfaces, port {worker.port}", line)
        self.assertIn(f"{loopback.DISABLE_ENV}=off", line)
        self.assertIsNone(worker.loopback)
        self.assertEqual(worker.target, f"127.0.0.1:{worker.port}")
        self.assertEqual(_mean([1.0, 2.0, 6.0]), 3.0)
        # What the warning says: the worker listens on every interface of this host.
        self.assertIn((ipaddress.ip_address("::"), worker.port), [e[:2] for e in _exposed(worker)])

    def test_refusal_by_the_kernel_falls_back_with_the_warning(self):
        # A user namespace where no further user namespace may be made: unshare(2) fails.
        script = textwrap.dedent(
            """
            import numpy as np
            import tensorflow_federated as tff
            from tff_vision import runtime
            worker = runtime.start_local_context()

            @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
            def mean(x):
                return tff.federated_mean(x)

            print('mean', mean([1.0, 2.0, 6.0]), worker.target, flush=True)
            """
        )
        shell = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"'
        if not _namespaces_available():
            self.skipTest("no user namespace to run the refusal in")
        result = subprocess.run(
            ["unshare", "-r", "sh", "-c", shell, sys.executable, script],
            capture_output=True,
            text=True,
            timeout=240,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("mean 3.0 127.0.0.1:", result.stdout)
        (line,) = [line for line in result.stderr.splitlines() if _WARNING in line]
        self.assertIn("network namespace refused", line)
        self.assertIn("all interfaces, port", line)


if __name__ == "__main__":
    absltest.main()
