"""Adversarial probe of `plasmaboot pxe-server`, run inside a network namespace the test
makes: option values that would write into dnsmasq's configuration, what reaches its hosts
file, dnsmasq killed under it, SIGTERM while it starts, a second server on the same
interface, and a hostile inventory edit while it runs. Refusals are one line and exit 2;
whatever happens, nothing is left running and its state directory is gone."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import Netns, netns, wait_for_text

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"
ipv4 = "10.77.0.11/24"

[machines.w2]
mac = ["52-54-00-AB-CD-02", "52:54:00:ab:cd:03"]
hostname = "worker-2.rack-1.lab"

[machines.w3]
mac = "52:54:00:12:34:04"
hostname = "x1"
"""
RANGE = ["--dhcp-range", "10.77.0.100,10.77.0.150"]


@pytest.fixture(scope="module")
def space() -> Iterator[Netns]:
    with netns("adv") as made:
        yield made


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    """machines.toml, an empty artifacts directory and TMPDIR for the server's state: a
    directory dnsmasq's own user can enter (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="plasmaboot-adversarial-"))
    directory.chmod(0o755)
    path = directory / "machines.toml"
    path.write_text(INVENTORY)
    (directory / "artifacts").mkdir()
    (directory / "state").mkdir(mode=0o755)
    yield path
    shutil.rmtree(directory)


def argv(inventory: Path, *extra: str, interface: str = "br0") -> list[str]:
    """pxe-server with its state directory (TMPDIR) where the test can look for leftovers."""
    return [
        "env", f"TMPDIR={inventory.parent / 'state'}",
        sys.executable, "-m", "plasmaboot", "pxe-server", "--interface", interface,
        "--root", str(inventory.parent / "artifacts"), "--inventory", str(inventory), *extra,
    ]  # fmt: skip


def one_line_refusal(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2, lines
    return lines[0]


def leftovers(space: Netns, inventory: Path, *keep: int) -> tuple[list[int], list[Path]]:
    """Processes still in the namespace (but `keep`) and state directories still there."""
    time.sleep(0.3)
    processes = [pid for pid in space.pids() if pid not in keep]
    return processes, list((inventory.parent / "state").iterdir())


def start(space: Netns, inventory: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    server = space.popen(*argv(inventory, *RANGE, *extra), log=log)
    if not (wait_for_text(log, "pxe-server on br0", 60, server) and running(space, server)):
        server.kill()
        server.wait()
        pytest.fail(log.read_text())
    return server


def running(space: Netns, server: subprocess.Popen[bytes]) -> bool:
    """The server and its dnsmasq are up (dnsmasq fails a moment after the announcement
    when it cannot start)."""
    time.sleep(0.5)
    return server.poll() is None and bool(dnsmasq_pids(space))


def dnsmasq_pids(space: Netns) -> list[int]:
    found = []
    for pid in space.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text() == "dnsmasq\n":
                found.append(pid)
        except OSError:
            continue
    return found


def stop(server: subprocess.Popen[bytes]) -> int:
    server.send_signal(signal.SIGTERM)
    return server.wait(timeout=30)


# ------------------------------------------------------------------------------------------
# option values that would write into dnsmasq's configuration


@pytest.mark.parametrize(
    "interface",
    ["br0\nport=53", "br0,lo", "br0 ", "br0#", "br0=1", "", "a" * 16, "../br0"],
)
def test_an_interface_name_that_is_no_name_is_refused(
    space: Netns, inventory: Path, interface: str
) -> None:
    proc = space.run(*argv(inventory, *RANGE, "--print-config", interface=interface))
    line = one_line_refusal(proc)
    assert "--interface" in line and "port=53" not in proc.stdout


@pytest.mark.parametrize(
    "value",
    ["10.77.0.100,10.77.0.150\nport=53", "10.77.0.100,10.77.0.150,255.0.0.0",
     "10.77.0.100,10.77.0.150,infinite", "10.77.0.100 ,10.77.0.150#x", "10.77.0.100",
     "10.77.0.100,,10.77.0.150", "10.77.0.100-10.77.0.150", "::1,::2", ","],
)  # fmt: skip
def test_a_dhcp_range_that_is_not_two_addresses_is_refused(
    space: Netns, inventory: Path, value: str
) -> None:
    proc = space.run(*argv(inventory, "--dhcp-range", value, "--print-config"))
    assert "--dhcp-range" in one_line_refusal(proc)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "80\nport=53", "8080,53"])
def test_an_http_port_out_of_range_is_refused(space: Netns, inventory: Path, port: str) -> None:
    proc = space.run(*argv(inventory, *RANGE, "--http-port", port, "--print-config"))
    assert proc.returncode == 2 and "--http-port" in proc.stderr and "Traceback" not in proc.stderr


def test_the_hosts_file_has_one_plain_line_per_mac(space: Netns, inventory: Path) -> None:
    proc = space.run(*argv(inventory, *RANGE, "--print-config"))
    assert proc.returncode == 0, proc.stderr
    hosts = proc.stdout.split("/hosts ---\n", 1)[1].splitlines()
    entries = [line for line in hosts if not line.startswith("#")]
    assert entries == [
        "52:54:00:12:34:01,10.77.0.11,w1",
        "52:54:00:ab:cd:02,worker-2.rack-1.lab",
        "52:54:00:ab:cd:03,worker-2.rack-1.lab",
        "52:54:00:12:34:04,x1",
    ]
    line = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}(,10\.77\.0\.\d+)?,[a-z0-9.-]*[a-z-][a-z0-9-]*")
    assert all(line.fullmatch(entry) for entry in entries)
    config = proc.stdout.split("\n# --- ", 1)[0]
    assert all(not entry.startswith(("dhcp-host", "conf-", "dhcp-script")) for entry in hosts)
    assert "dhcp-script" not in config and "conf-dir" not in config


# ------------------------------------------------------------------------------------------
# dnsmasq dies, SIGTERM while starting, two servers


def test_dnsmasq_killed_stops_the_server_with_one_line(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    log = tmp_path / "pxe.log"
    server = start(space, inventory, log, "--http-port", "8181")
    try:
        dnsmasq = dnsmasq_pids(space)
        assert len(dnsmasq) == 1
        os.kill(dnsmasq[0], signal.SIGKILL)
        assert server.wait(timeout=30) == 1
    finally:
        if server.poll() is None:
            server.kill()
    text = log.read_text()
    assert "failed: dnsmasq was killed by SIGKILL" in text and "Traceback" not in text, text
    assert leftovers(space, inventory) == ([], [])


@pytest.mark.parametrize("delay", [0.1, 0.4, 0.8, 1.2, 2.0])
def test_sigterm_while_starting_leaves_nothing(
    space: Netns, inventory: Path, tmp_path: Path, delay: float
) -> None:
    """Before its handler is installed SIGTERM kills it outright (nothing is started yet);
    after, it stops what it started."""
    log = tmp_path / "pxe.log"
    server = space.popen(*argv(inventory, *RANGE, "--http-port", "8182"), log=log)
    time.sleep(delay)
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=30)
    assert code in (0, -signal.SIGTERM), log.read_text()  # before its handler: the default
    assert "Traceback" not in log.read_text()
    assert leftovers(space, inventory) == ([], [])


def test_a_second_server_on_the_same_interface_is_refused(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    first = start(space, inventory, tmp_path / "first.log", "--http-port", "8183")
    try:
        for extra in (["--http-port", "8183"], ["--http-port", "8184"]):
            proc = space.run(*argv(inventory, "--dhcp-range", "10.77.0.160,10.77.0.170", *extra))
            assert "cannot bind (Address already in use)" in one_line_refusal(proc)
        proxy = space.run(*argv(inventory, "--proxy-dhcp", "--http-port", "8185"))
        assert "UDP port" in one_line_refusal(proxy)
        assert first.poll() is None
    finally:
        assert stop(first) == 0
    assert leftovers(space, inventory) == ([], [])


def test_a_dhcp_server_on_another_interface_is_no_conflict(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    """What libvirt's dnsmasq does on virbr0: 0.0.0.0:67 bound to its own interface."""
    subprocess.run(["ip", "-n", space.name, "link", "add", "other0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", space.name, "link", "set", "other0", "up"], check=True)
    holder = space.popen(
        sys.executable, "-c",
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'other0')\n"
        "s.bind(('0.0.0.0', 67)); print('bound', flush=True); time.sleep(120)\n",
        log=tmp_path / "holder.log",
    )  # fmt: skip
    try:
        assert wait_for_text(tmp_path / "holder.log", "bound", 20, holder)
        server = start(space, inventory, tmp_path / "pxe.log", "--http-port", "8186")
        assert stop(server) == 0
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["ip", "-n", space.name, "link", "del", "other0"], check=False)
    assert leftovers(space, inventory) == ([], [])


# ------------------------------------------------------------------------------------------
# a hostile inventory edit while it runs


def test_a_hostile_edit_reaches_neither_dnsmasq_nor_the_server(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    log = tmp_path / "pxe.log"
    server = start(space, inventory, log, "--http-port", "8187")
    try:
        state = next((inventory.parent / "state").iterdir())
        hosts = (state / "hosts").read_text()
        for hostile in (
            INVENTORY + '\n[machines.ignore]\nmac = "52:54:00:12:34:09"\n',
            INVENTORY.replace('hostname = "x1"', 'hostname = "10.77.0.12"'),
            INVENTORY + '\n[machines.w9]\nmac = "52:54:00:12:34:09"\nlabels = {a = "\\u001b"}\n',
            INVENTORY.replace("10.77.0.11/24", "10.99.0.11/24"),  # off the network
        ):
            temp = inventory.with_name(".machines.toml.tmp")
            temp.write_text(hostile)
            stamp = time.time_ns() - 5_000_000_000
            os.utime(temp, ns=(stamp, stamp))
            temp.replace(inventory)
            time.sleep(2.5)  # the supervisor looks every second
            assert server.poll() is None, log.read_text()
            assert (state / "hosts").read_text() == hosts
        answer = space.run("curl", "-sS", "http://10.77.0.1:8187/boot.ipxe?mac=52:54:00:12:34:09")
        assert "not in the inventory" in answer.stdout
        text = log.read_text()
        assert text.count("inventory not reloaded") + text.count("not applied to DHCP") == 4, text
    finally:
        assert stop(server) == 0
    assert leftovers(space, inventory) == ([], [])


def test_the_port_probe_is_free_again_after_a_stop(space: Netns, inventory: Path) -> None:
    """The probe itself must not hold a port (a restart right after a stop works)."""
    for run in range(2):
        log = inventory.parent / f"run{run}.log"
        assert stop(start(space, inventory, log, "--http-port", "8188")) == 0
    assert leftovers(space, inventory) == ([], [])


def test_a_state_directory_dnsmasq_cannot_enter_is_refused_before_starting(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    private = tmp_path / "private"  # pytest's tmp_path: root's alone
    private.mkdir(mode=0o700)
    command = argv(inventory, *RANGE, "--http-port", "8189")
    command[1] = f"TMPDIR={private}"
    proc = space.run(*command, timeout=60)
    assert "pxe-server on br0" not in proc.stderr
    assert "TMPDIR: " in one_line_refusal(proc) and "is not searchable" in proc.stderr
    assert leftovers(space, inventory) == ([], [])
    assert list(private.iterdir()) == []


def test_tftp_serves_the_loaders_and_nothing_above_them(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    server = start(space, inventory, tmp_path / "pxe.log", "--http-port", "8190")
    try:
        got = tmp_path / "got"
        for name in ("../dnsmasq.conf", "../hosts", "/etc/passwd", "..%2fhosts", "tftp/../../hosts",
                     "undionly.kpxe/../../hosts", "../../../../../etc/shadow"):  # fmt: skip
            got.unlink(missing_ok=True)
            proc = space.run("curl", "-sS", "--path-as-is", "-o", str(got),
                             f"tftp://10.77.0.1/{name}", timeout=30)  # fmt: skip
            assert proc.returncode != 0 and not (got.exists() and got.stat().st_size), name
        proc = space.run("curl", "-sS", "-o", str(got), "tftp://10.77.0.1/undionly.kpxe")
        assert (
            proc.returncode == 0
            and got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
        )
    finally:
        assert stop(server) == 0
