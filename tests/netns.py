"""A network namespace a test makes for itself: a bridge with the server's address, taps for
guests, and ways to run programs inside. Traffic never leaves it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_ADDRESS = "10.77.0.1"
PREFIX = 24
NEIGHBOUR_IF = "eth0"  # a neighbour host's one interface
BOOT_TIMEOUT = 420.0  # a guest's power-on to SSH under TCG on a busy 2-core machine
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# what a PXE boot in a namespace needs: `require(*PXE_TOOLS, files=PXE_FILES)`
PXE_TOOLS = ("ip", "dnsmasq", "qemu-system-x86_64", "ssh")
PXE_FILES = (OVMF_CODE, OVMF_VARS, Path("/usr/lib/ipxe/undionly.kpxe"),
             Path("/usr/lib/ipxe/snponly.efi"))  # fmt: skip


@dataclass(frozen=True)
class Netns:
    name: str
    bridge: str = "br0"

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def popen(self, *command: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(
                self.argv(*command), stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def add_tap(self, name: str) -> str:
        ip("-n", self.name, "tuntap", "add", name, "mode", "tap")
        ip("-n", self.name, "link", "set", name, "master", self.bridge, "up")
        return name

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def netns(tag: str) -> Iterator[Netns]:
    """A fresh namespace with `br0` at 10.77.0.1/24; everything in it is killed after."""
    with namespace(f"pbtest-{tag}-{os.getpid()}") as space:
        ip("-n", space.name, "link", "add", space.bridge, "type", "bridge")
        ip("-n", space.name, "addr", "add", f"{SERVER_ADDRESS}/{PREFIX}", "dev", space.bridge)
        ip("-n", space.name, "link", "set", space.bridge, "up")
        yield space


@contextmanager
def neighbour(space: Netns, tag: str, address: str) -> Iterator[Netns]:
    """Another host on `space`'s bridge: a namespace of its own whose `eth0` (with
    `address`/24) is one end of a veth pair, the other end a port of the bridge."""
    with namespace(f"pbtest-{tag}-{os.getpid()}") as host:
        port = f"v{tag}"[:15]
        ip("-n", space.name, "link", "add", port, "type", "veth", "peer", "name", NEIGHBOUR_IF,
           "netns", host.name)  # fmt: skip
        ip("-n", space.name, "link", "set", port, "master", space.bridge, "up")
        ip("-n", host.name, "addr", "add", f"{address}/{PREFIX}", "dev", NEIGHBOUR_IF)
        ip("-n", host.name, "link", "set", NEIGHBOUR_IF, "up")
        try:
            yield host
        finally:
            subprocess.run(["ip", "-n", space.name, "link", "del", port], check=False,
                           capture_output=True)  # fmt: skip


@contextmanager
def namespace(name: str) -> Iterator[Netns]:
    """An empty namespace (loopback up); every process in it is killed, then it is removed."""
    space = Netns(name)
    ip("netns", "add", space.name)
    try:
        ip("-n", space.name, "link", "set", "lo", "up")
        yield space
    finally:
        for pid in space.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", space.name], check=False, capture_output=True)


def wait_for_text(path: Path, needle: str, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    """True once `needle` shows in the file; False on timeout or when `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return path.exists() and needle in path.read_text(errors="replace")
        time.sleep(0.1)
    return False


def qemu_argv(tap: str, mac: str, workdir: Path, uefi: bool) -> list[str]:
    """A diskless guest on `tap` that boots from the network: SeaBIOS with QEMU's iPXE ROM,
    or OVMF with its own PXE (no option ROM, so the firmware fetches iPXE over TFTP)."""
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-smp", "2", "-m", "1024",
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{workdir / 'serial.log'}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
    ]  # fmt: skip
    if uefi:
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        # romfile= (none): OVMF's own PXE boots, so the TFTP hop (snponly.efi) is exercised
        return [
            *argv, "-machine", "q35",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        ]  # fmt: skip
    return [*argv, "-machine", "pc", "-boot", "order=n",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]  # fmt: skip


def ssh(
    space: Netns, identity: Path, address: str, command: str
) -> subprocess.CompletedProcess[str]:
    return space.run(
        "ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=3", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-i", str(identity), f"root@{address}", command, timeout=60,
    )  # fmt: skip


def boot_to_ssh(space: Netns, identity: Path, workdir: Path, tap: str, mac: str, address: str,
                uefi: bool) -> tuple[str, float]:  # fmt: skip
    """Power on a guest on a new tap of `space`, wait for SSH at `address`; ("<hostname>
    <firmware>", seconds), the firmware as the booted kernel saw it (uefi or bios)."""
    space.add_tap(tap)
    qemu = space.popen(*qemu_argv(tap, mac, workdir, uefi), log=workdir / "qemu.log")
    started = time.monotonic()
    try:
        while time.monotonic() - started < BOOT_TIMEOUT:
            assert qemu.poll() is None, (workdir / "qemu.log").read_text()
            answer = ssh(
                space,
                identity,
                address,
                "echo $(hostname) $(test -d /sys/firmware/efi && echo uefi || echo bios)",
            )
            if answer.returncode == 0:
                return answer.stdout.strip(), time.monotonic() - started
            time.sleep(2)
        serial = (workdir / "serial.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"no SSH at {address} after {BOOT_TIMEOUT:.0f}s\n{serial}")
    finally:
        qemu.kill()
        qemu.wait()


def require(*tools: str, files: tuple[Path, ...] = ()) -> None:
    """Fail (never skip) when a program or file a network test needs is missing: CI must
    not pass by leaving the test out."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [str(path) for path in files if not path.is_file()]
    if missing:
        pytest.fail(f"missing: {', '.join(missing)} (run `make setup`)", pytrace=False)
