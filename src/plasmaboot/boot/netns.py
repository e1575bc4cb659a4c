"""A network namespace boot-test makes for itself: a bridge at the server's address, taps
for guests, programs run inside it (`ip netns exec`), TCP connections opened from inside it,
and everything removed afterwards on every exit path. Traffic never leaves the namespace:
it has no link to the host's network."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.errors import UserError, WorkError
from plasmaboot.log import Log
from plasmaboot.run import require_tool, run

NETNS_DIR = Path("/run/netns")  # where `ip netns add` keeps a namespace's handle
CLONE_NEWNET = 0x40000000
BRIDGE = "br0"
IP_TIMEOUT = 30.0
SETTLE = 0.2  # seconds killed programs get to leave before the namespace is deleted


@dataclass(frozen=True)
class Netns:
    name: str
    bridge: str = BRIDGE

    @property
    def handle(self) -> Path:
        return NETNS_DIR / self.name

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def add_tap(self, name: str, log: Log | None = None) -> str:
        """A tap on the bridge, for one QEMU NIC (QEMU must then run inside too)."""
        ip(["-n", self.name, "tuntap", "add", name, "mode", "tap"], log)
        ip(["-n", self.name, "link", "set", name, "master", self.bridge, "up"], log)
        return name

    def pids(self) -> list[int]:
        """The processes living in the namespace."""
        proc = run(["ip", "netns", "pids", self.name], check=False, timeout=IP_TIMEOUT)
        return [int(pid) for pid in proc.stdout.split() if pid.isdigit()]

    def connect(self, address: tuple[str, int], timeout: float) -> socket.socket:
        """A TCP connection made from inside the namespace. A socket belongs to the
        namespace it was created in, so it is created by a short-lived thread that entered
        the namespace (setns changes the calling thread only); connecting and reading then
        work from any thread."""
        sock = socket_in(self.handle)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock


def ip(args: Sequence[str], log: Log | None = None) -> None:
    run(["ip", *args], log=log, timeout=IP_TIMEOUT)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at `fd`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def socket_in(handle: Path) -> socket.socket:
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def inside() -> None:
        try:
            with handle.open("rb") as space:
                setns(space.fileno())
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=inside, name="plasmaboot-netns-socket")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def require_netns() -> None:
    """UserError unless this process can make namespaces, bridges and taps."""
    require_tool("ip")
    if os.geteuid() != 0:
        raise UserError(
            "--network netns: needs root (it creates a network namespace, a bridge and a tap, "
            "and runs dnsmasq)",
            hint="run boot-test as root (sudo), or leave --network out (QEMU's user network)",
        )


def namespace_name(prefix: str = "plasmaboot", pid: int | None = None) -> str:
    """The namespace of one run: its process id makes it unique on this machine."""
    return f"{prefix}-{os.getpid() if pid is None else pid}"


@contextmanager
def namespace(
    name: str,
    address: ipaddress.IPv4Interface,
    log: Log | None = None,
    ipv6: ipaddress.IPv6Interface | None = None,
) -> Iterator[Netns]:
    """A fresh namespace with its loopback up and a bridge at `address` (and `ipv6`); on
    exit, whatever still runs inside is killed and the namespace (with its bridge and taps)
    deleted."""
    space = Netns(name)
    if space.handle.exists():
        raise UserError(
            f"network namespace {name} already exists",
            hint=f"another run uses it, or one was killed: `ip netns del {name}` if none is "
            "running",
        )
    ip(["netns", "add", name], log)
    try:
        ip(["-n", name, "link", "set", "lo", "up"], log)
        ip(["-n", name, "link", "add", space.bridge, "type", "bridge"], log)
        ip(["-n", name, "addr", "add", str(address), "dev", space.bridge], log)
        if ipv6 is not None:
            ip(["-n", name, "addr", "add", str(ipv6), "dev", space.bridge, "nodad"], log)
        ip(["-n", name, "link", "set", space.bridge, "up"], log)
        yield space
    finally:
        remove(space, log)


def remove(space: Netns, log: Log | None = None) -> None:
    """Kill what runs inside (by pid), then delete the namespace; taps and the bridge go
    with it."""
    pids = space.pids()
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        time.sleep(SETTLE)
        if log is not None:
            log.info(f"killed {len(pids)} leftover processes in {space.name}: {pids}")
    proc = run(["ip", "netns", "del", space.name], log=log, check=False, timeout=IP_TIMEOUT)
    if proc.returncode != 0 and space.handle.exists():
        raise WorkError(
            f"could not delete the network namespace {space.name}: "
            f"{proc.stdout.decode(errors='replace').strip()}",
            hint=f"delete it by hand: ip netns del {space.name}",
        )
