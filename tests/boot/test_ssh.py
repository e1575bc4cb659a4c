"""boot.ssh: the SSH probe, against a real listening socket on loopback or inside a
namespace the test makes (as boot-test's --network netns reaches its guest)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from plasmaboot.boot import ssh as ssh_module
from plasmaboot.boot.netns import Netns, namespace, namespace_name, socket_in
from plasmaboot.boot.ssh import Greeting, Ssh, wait_for_ssh
from plasmaboot.boot.watch import BootWatch


@contextmanager
def ssh_port(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose one accepted connection is handed to `handle`."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            handle(connection)
            done.wait(10)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join()
        server.close()


def test_greeting_is_the_banner_a_reset_or_silence() -> None:
    identity = Path("/nonexistent")
    with ssh_port(lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")) as port:
        assert Ssh(port, identity).greeting(5) is Greeting.BANNER
    with ssh_port(lambda c: c.close()) as port:
        assert Ssh(port, identity).greeting(5) is Greeting.CLOSED
    with ssh_port(lambda c: None) as port:
        started = time.monotonic()
        assert Ssh(port, identity).greeting(0.5) is Greeting.SILENT
        assert 0.5 <= time.monotonic() - started < 3


def test_a_silent_probe_gives_up_when_asked() -> None:
    with ssh_port(lambda c: None) as port:
        started = time.monotonic()
        answer = Ssh(port, Path("/nonexistent")).greeting(30, give_up=lambda: True)
        assert answer is Greeting.SILENT
        assert time.monotonic() - started < 2


def test_a_refused_connection_is_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    assert Ssh(port, Path("/nonexistent")).greeting(5) is Greeting.CLOSED


# --------------------------------------------------------------------------------------
# inside boot-test's namespace: ssh through `ip netns exec`, probes from a socket made there


def test_ssh_in_a_namespace_goes_to_the_guests_address() -> None:
    space = Netns("pbtest-ssh")
    ssh = Ssh(22, Path("/id"), host="10.77.0.2", netns=space)
    argv = ssh.argv("true")
    assert argv[:5] == ["ip", "netns", "exec", "pbtest-ssh", "ssh"]
    assert argv[-2:] == ["root@10.77.0.2", "true"]
    assert argv[argv.index("-p") + 1] == "22"
    assert ssh.direct and not Ssh(2222, Path("/id")).direct


@dataclass
class FakeVm:
    """What wait_for_ssh reads of a PxeVm: its watch, and a wait_until that polls."""

    watch: BootWatch

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str, every: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(every)


def test_a_guest_on_a_tap_is_probed_once_its_kernel_is_there(tmp_path: Path) -> None:
    accepted: list[float] = []
    with namespace(
        namespace_name("pbtest-probe"), ipaddress.IPv4Interface("10.77.0.1/24")
    ) as space:
        server = socket_in(space.handle)
        server.bind(("10.77.0.1", 0))
        server.listen()

        def greet() -> None:
            connection, _ = server.accept()
            accepted.append(time.monotonic())
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

        thread = threading.Thread(target=greet)
        thread.start()
        watch = BootWatch(tmp_path / "serial.log", None)
        vm = FakeVm(watch)
        ssh = Ssh(server.getsockname()[1], Path("/id"), host="10.77.0.1", netns=space)
        timer = threading.Timer(1.0, lambda: watch.mark("initrd_fetched"))
        timer.start()
        started = time.monotonic()
        wait_for_ssh(vm, ssh, timeout=20)  # type: ignore[arg-type]
        thread.join()
        server.close()
    assert accepted and accepted[0] - started >= 1.0  # nothing probed before the kernel
    assert watch.events["network_up"] >= watch.events["initrd_fetched"]


@dataclass
class ScriptedSsh:
    """Answers each probe from a list, as a guest on a tap would, in order."""

    answers: list[Greeting]
    direct: bool = True

    def greeting(self, timeout: float, connect_timeout: float | None = None) -> Greeting:
        return self.answers.pop(0)


def test_a_reset_from_ipxe_before_the_kernel_is_not_the_network(tmp_path: Path) -> None:
    watch = BootWatch(tmp_path / "serial.log", None)
    watch.mark("initrd_fetched")
    # iPXE still holds the address and resets the probe; the kernel boots (silence); its
    # stack resets a probe (up, sshd not yet); sshd greets
    answers = [Greeting.CLOSED, Greeting.SILENT, Greeting.SILENT, Greeting.CLOSED]
    ssh = ScriptedSsh([*answers, Greeting.BANNER])
    seen: list[bool] = []

    class Vm(FakeVm):
        def wait_until(
            self, done: Callable[[], bool], timeout: float, what: str, every: float
        ) -> None:
            while not done():
                seen.append("network_up" in self.watch.events)

    wait_for_ssh(Vm(watch), ssh, timeout=10)  # type: ignore[arg-type]
    assert seen == [False, False, False, True]  # marked by the reset after the silence
    assert not ssh.answers


def test_with_the_nodes_reported_keys_ssh_checks_the_host_key(tmp_path: Path) -> None:
    strict = Ssh(22, tmp_path / "id", known_hosts=tmp_path / "known_hosts").argv("true")
    assert "StrictHostKeyChecking=yes" in strict
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in strict
    assert "StrictHostKeyChecking=no" in Ssh(22, tmp_path / "id").argv("true")


@pytest.mark.parametrize(
    ("answers", "logged_in", "tries"),
    [
        ([(255, "Connection timed out during banner exchange"), (0, "")], True, 2),
        ([(255, "kex_exchange_identification: read: Connection reset by peer")] * 3, False, 3),
        ([(255, "root@127.0.0.1: Permission denied (publickey).")], False, 1),  # a refusal
        ([(0, "")], True, 1),
    ],
)
def test_a_login_broken_before_authentication_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
    answers: list[tuple[int, str]],
    logged_in: bool,
    tries: int,
) -> None:
    monkeypatch.setattr(ssh_module, "LOGIN_RETRY_PAUSE", 0.0)
    calls: list[str] = []

    def run(self: Ssh, command: str, timeout: float = 0) -> tuple[int, str]:
        calls.append(command)
        return answers[len(calls) - 1]

    monkeypatch.setattr(Ssh, "run", run)
    assert Ssh(22, Path("id")).login()[0] is logged_in
    assert len(calls) == tries
