"""boot.netns, for real (as root): a namespace made and removed with everything in it, on a
normal exit and when the block raises; its bridge and taps; connections opened from inside;
the name of a run's namespace; refusing to work without root."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from plasmaboot.boot import netns as netns_module
from plasmaboot.boot.netns import Netns, namespace, namespace_name, require_netns, socket_in
from plasmaboot.errors import UserError

ADDRESS = ipaddress.IPv4Interface("10.77.0.1/24")


def listed() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_a_runs_namespace_is_named_after_its_process() -> None:
    assert namespace_name() == f"plasmaboot-{os.getpid()}"
    assert namespace_name("pbtest-x", pid=42) == "pbtest-x-42"


def test_a_namespace_has_a_bridge_at_the_address_and_taps_on_it() -> None:
    name = namespace_name("pbtest-bridge")
    with namespace(name, ADDRESS) as space:
        assert name in listed()
        shown = json.loads(subprocess.run(
            ["ip", "-n", name, "-j", "addr", "show", "dev", space.bridge],
            capture_output=True, text=True, check=True,
        ).stdout)[0]  # fmt: skip
        assert "UP" in shown["flags"]
        assert {"local": "10.77.0.1", "prefixlen": 24} in [
            {"local": a["local"], "prefixlen": a["prefixlen"]} for a in shown["addr_info"]
        ]
        space.add_tap("tap0")
        tap = subprocess.run(
            ["ip", "-n", name, "-d", "link", "show", "tap0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert f"master {space.bridge}" in tap and "tun type tap" in tap
        # the host has no such link: the namespace is apart
        assert subprocess.run(["ip", "link", "show", "tap0"], capture_output=True).returncode
    assert name not in listed()


def test_everything_inside_is_killed_and_the_namespace_removed_when_the_block_raises() -> None:
    name = namespace_name("pbtest-raise")
    with pytest.raises(RuntimeError, match="boom"), namespace(name, ADDRESS) as space:
        sleeper = subprocess.Popen(space.argv(["sleep", "600"]))
        deadline = time.monotonic() + 10  # `ip netns exec` enters, then runs sleep
        while sleeper.pid not in space.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in space.pids()
        raise RuntimeError("boom")
    sleeper.wait(timeout=10)
    assert not alive(sleeper.pid)
    assert name not in listed()
    assert not (netns_module.NETNS_DIR / name).exists()


def test_a_namespace_that_exists_already_is_refused_and_left_alone() -> None:
    name = namespace_name("pbtest-twice")
    with namespace(name, ADDRESS):
        refused = pytest.raises(UserError, match=f"network namespace {name} already exists")
        with refused, namespace(name, ADDRESS):
            pass  # pragma: no cover
        assert name in listed()  # the refusal did not delete the first one
    assert name not in listed()


def test_connections_are_made_from_inside_the_namespace() -> None:
    with namespace(namespace_name("pbtest-connect"), ADDRESS) as space:
        server = socket_in(space.handle)  # a listener inside, on the bridge's address
        server.bind(("10.77.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def greet() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"SSH-2.0-inside\r\n")

        thread = threading.Thread(target=greet)
        thread.start()
        with space.connect(("10.77.0.1", port), timeout=5) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-inside")
        thread.join()
        server.close()
        # the host's loopback is not the namespace's: a listener here is not reachable
        with socket.create_server(("127.0.0.1", 0)) as host_listener:
            host_port = host_listener.getsockname()[1]
            with pytest.raises(ConnectionRefusedError):
                space.connect(("127.0.0.1", host_port), timeout=5)
        # an address nobody answers for: silence, given up on after the timeout
        with pytest.raises(OSError):
            space.connect(("10.77.0.2", 22), timeout=0.5)


def test_without_root_there_is_no_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns_module.os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="--network netns: needs root") as refused:
        require_netns()
    assert refused.value.exit_code == 2
    assert "sudo" in str(refused.value.hint)


def test_a_netns_value_is_plain_data() -> None:
    space = Netns("pbtest-data")
    argv = space.argv(["ssh", "-p", "22"])
    assert argv == ["ip", "netns", "exec", "pbtest-data", "ssh", "-p", "22"]
    assert space.handle == Path("/run/netns/pbtest-data")
