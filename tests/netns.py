"""A network namespace a test makes for itself: a bridge with the server's address, taps for
guests, and ways to run programs inside. Traffic never leaves it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SERVER_ADDRESS = "10.77.0.1"
PREFIX = 24


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
    space = Netns(f"pbtest-{tag}-{os.getpid()}")
    ip("netns", "add", space.name)
    try:
        ip("-n", space.name, "link", "set", "lo", "up")
        ip("-n", space.name, "link", "add", space.bridge, "type", "bridge")
        ip("-n", space.name, "addr", "add", f"{SERVER_ADDRESS}/{PREFIX}", "dev", space.bridge)
        ip("-n", space.name, "link", "set", space.bridge, "up")
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
