"""`plasmaboot pxe-server`, run for real inside a network namespace the test makes: what it
refuses before starting, and what it serves (DHCP config, TFTP loaders, HTTP scripts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from netns import SERVER_ADDRESS, Netns, neighbour, netns, wait_for_text

PXECLIENT = Path(__file__).parents[1] / "pxeclient.py"
KNOWN_MAC, UNKNOWN_MAC = "52:54:00:12:34:01", "52:54:00:99:99:99"
INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"
ipv4 = "10.77.0.11/24"
"""


@pytest.fixture(scope="module")
def space() -> Iterator[Netns]:
    with netns("pxe") as made:
        yield made


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    (tmp_path / "artifacts").mkdir()
    return path


def pxe_argv(inventory: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "plasmaboot", "pxe-server", "--interface", "br0",
        "--root", str(inventory.parent / "artifacts"), "--inventory", str(inventory), *extra,
    ]  # fmt: skip


def refused(space: Netns, inventory: Path, *extra: str) -> str:
    proc = space.run(*pxe_argv(inventory, *extra))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ")
    return proc.stderr


def test_a_missing_interface(space: Netns, inventory: Path) -> None:
    argv = pxe_argv(inventory, "--dhcp-range", "10.77.0.100,10.77.0.150")
    argv[argv.index("br0")] = "nosuch0"
    proc = space.run(*argv)
    assert proc.returncode == 2 and "--interface nosuch0: no such network interface" in proc.stderr


def test_an_interface_without_ipv4(space: Netns, inventory: Path) -> None:
    subprocess.run(["ip", "-n", space.name, "tuntap", "add", "nov4", "mode", "tap"], check=True)
    argv = pxe_argv(inventory, "--dhcp-range", "10.77.0.100,10.77.0.150")
    argv[argv.index("br0")] = "nov4"
    proc = space.run(*argv)
    assert proc.returncode == 2 and "--interface nov4: has no IPv4 address" in proc.stderr


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dhcp-range", "10.88.0.100,10.88.0.150"], "inside 10.77.0.0/24"),
        (["--dhcp-range", "10.77.0.150,10.77.0.100"], "START <= END"),
        (["--dhcp-range", "10.77.0.1,10.77.0.10"], "this server's own address"),
        (["--dhcp-range", "nonsense"], "expected START,END"),
        ([], "exactly one of --dhcp-range"),
        (["--dhcp-range", "10.77.0.100,10.77.0.150", "--proxy-dhcp"], "exactly one of"),
    ],
)
def test_bad_options_are_refused(
    space: Netns, inventory: Path, extra: list[str], fragment: str
) -> None:
    assert fragment in refused(space, inventory, *extra)


def test_a_static_address_off_the_network_is_refused(space: Netns, inventory: Path) -> None:
    inventory.write_text(INVENTORY.replace("10.77.0.11/24", "10.99.0.11/24"))
    stderr = refused(space, inventory, "--dhcp-range", "10.77.0.100,10.77.0.150")
    assert "machines.w1.ipv4: 10.99.0.11/24 is not on br0's network 10.77.0.0/24" in stderr


def test_a_taken_http_port_is_refused(space: Netns, inventory: Path, tmp_path: Path) -> None:
    holder = space.popen(
        sys.executable, "-c",
        "import socket, time; s = socket.socket(); "
        f"s.bind(('{SERVER_ADDRESS}', 8099)); s.listen(); print('bound', flush=True); "
        "time.sleep(60)",
        log=tmp_path / "holder.log",
    )  # fmt: skip
    try:
        assert wait_for_text(tmp_path / "holder.log", "bound", 10, holder)
        stderr = refused(
            space, inventory, "--dhcp-range", "10.77.0.100,10.77.0.150", "--http-port", "8099"
        )
        assert "--http-port 8099" in stderr and "cannot bind" in stderr
    finally:
        holder.kill()
        holder.wait()


def test_print_config(space: Netns, inventory: Path) -> None:
    proc = space.run(*pxe_argv(inventory, "--dhcp-range", "10.77.0.100,10.77.0.150",
                               "--print-config"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h" in proc.stdout
    assert "52:54:00:12:34:01,10.77.0.11,w1" in proc.stdout
    assert "dhcp-boot=tag:ipxe,http://10.77.0.1:8080/boot.ipxe" in proc.stdout


def test_it_serves_tftp_and_http_reloads_and_stops_cleanly(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    log = tmp_path / "pxe.log"
    server = space.popen(
        *pxe_argv(inventory, "--dhcp-range", "10.77.0.100,10.77.0.150", "--http-port", "8081"),
        log=log,
    )
    try:
        assert wait_for_text(log, "pxe-server on br0", 30, server), log.read_text()
        assert wait_for_text(log, "read ", 10, server)  # dnsmasq read the hosts file
        # TFTP: Debian's loaders, byte for byte
        for loader in ("undionly.kpxe", "snponly.efi"):
            got = tmp_path / loader
            proc = space.run("curl", "-sS", "-o", str(got), f"tftp://{SERVER_ADDRESS}/{loader}")
            assert proc.returncode == 0, proc.stderr
            assert got.read_bytes() == Path(f"/usr/lib/ipxe/{loader}").read_bytes()
        # HTTP on the interface's address: known and unknown machines
        url = f"http://{SERVER_ADDRESS}:8081/boot.ipxe?mac="
        known = space.run("curl", "-sS", url + "52:54:00:12:34:01").stdout
        assert "no image is published for worker" in known  # nothing was built here
        unknown = space.run("curl", "-sS", url + "52:54:00:99:99:99").stdout
        assert "not in the inventory" in unknown
        # an edited inventory reaches dnsmasq without a restart
        reads = log.read_text().count("/hosts")
        inventory.write_text(INVENTORY + '\n[machines.w2]\nmac = "52:54:00:12:34:02"\n')
        stamp = time.time_ns() + 2_000_000_000
        os.utime(inventory, ns=(stamp, stamp))
        deadline = time.monotonic() + 15
        while log.read_text().count("/hosts") <= reads and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.read_text().count("/hosts") > reads, log.read_text()
        hosts = [p for p in Path("/tmp").glob("plasmaboot-pxe-*/hosts") if "w2" in p.read_text()]
        assert hosts, "the hosts file was not rewritten with the new machine"
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
    assert not [pid for pid in space.pids() if pid != server.pid], "something was left running"


@contextmanager
def proxy_server(space: Netns, inventory: Path, log: Path) -> Iterator[Netns]:
    """pxe-server --proxy-dhcp in `space`, and a neighbour host (10.77.0.50) to ask it from;
    on the way out: SIGTERM, a clean exit and nothing left running."""
    server = space.popen(*pxe_argv(inventory, "--proxy-dhcp", "--http-port", "8082"), log=log)
    try:
        assert wait_for_text(log, "pxe-server on br0", 30, server), log.read_text()
        assert "proxyDHCP" in log.read_text()
        assert wait_for_text(log, "read ", 10, server), log.read_text()  # the hosts file
        with neighbour(space, "client", "10.77.0.50") as client:
            yield client
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
    assert not [pid for pid in space.pids() if pid != server.pid], "something was left running"


def ask(client: Netns, mac: str, arch: int, ipxe: bool = False) -> dict[str, dict[str, object]]:
    """What the proxy tells a PXE client (tests/pxeclient.py): its offer, then its answer on
    port 4011."""
    argv = [sys.executable, str(PXECLIENT), mac, str(arch), *(["--ipxe"] if ipxe else [])]
    proc = client.run(*argv)
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, dict[str, object]] = json.loads(proc.stdout)
    return answer


@pytest.mark.parametrize(
    ("arch", "ipxe", "file"),
    [
        (0, False, "undionly.kpxe"),  # a BIOS PXE ROM: the loader by its own name, no ".0"
        (7, False, "snponly.efi"),  # OVMF's PXE (BC_EFI)
        (9, False, "snponly.efi"),  # other UEFI x86-64 firmware
        (0, True, "http://10.77.0.1:8082/boot.ipxe"),  # iPXE (a NIC ROM, or undionly.kpxe)
        (9, True, "http://10.77.0.1:8082/boot.ipxe"),  # iPXE (snponly.efi)
    ],
    ids=["bios", "uefi-bc", "uefi-x64", "ipxe-bios", "ipxe-uefi"],
)
def test_proxy_mode_tells_a_known_client_its_boot_file(
    space: Netns, inventory: Path, tmp_path: Path, arch: int, ipxe: bool, file: str
) -> None:
    with proxy_server(space, inventory, tmp_path / "pxe.log") as client:
        answer = ask(client, KNOWN_MAC, arch, ipxe)
        offer, ack = answer["offer"], answer["ack"]
        assert offer is not None and offer["server"] == SERVER_ADDRESS, answer
        # iPXE takes a proxy answer only with both a next server and a file name
        assert ack == {"server": SERVER_ADDRESS, "file": file, "siaddr": SERVER_ADDRESS,
                       "menu": ack["menu"]}, answer  # fmt: skip
        if arch == 0 and not ipxe:  # a BIOS ROM chose the one menu item, it booted at once
            assert len(offer["menu"]) == 1, answer  # type: ignore[arg-type]
        if not ipxe:  # the loader it was told to fetch is there, over TFTP
            got = tmp_path / file
            proc = client.run("curl", "-sS", "-o", str(got), f"tftp://{SERVER_ADDRESS}/{file}")
            assert proc.returncode == 0, proc.stderr
            assert got.read_bytes() == Path(f"/usr/lib/ipxe/{file}").read_bytes()


def test_proxy_mode_ignores_an_unknown_client(
    space: Netns, inventory: Path, tmp_path: Path
) -> None:
    log = tmp_path / "pxe.log"
    with proxy_server(space, inventory, log) as client:
        assert ask(client, UNKNOWN_MAC, 0) == {"offer": None, "ack": None}
        assert ask(client, UNKNOWN_MAC, 7) == {"offer": None, "ack": None}
    assert f"PXE(br0) {UNKNOWN_MAC} proxy-ignored" in log.read_text()
