"""serve --inventory's per-node layer and host-key reports, over real HTTP: the script's
second initrd, the token bound to the fetching address (static address, dnsmasq lease, or
the fetcher), the report recorded once, replays, wrong addresses, expiry and oversized
bodies refused with a one-line log; and the node's reporter script run against it."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from aiohttp import web

from node_layers import members, write_node
from plasmaboot.artifacts.layout import INITRD, IPXE, KERNEL, MANIFEST
from plasmaboot.artifacts.publish import publish_atomically
from plasmaboot.formats import FormatError
from plasmaboot.formats.ipxe import render_netboot_script
from plasmaboot.inventory.load import load_inventory
from plasmaboot.inventory.state import known_hosts_lines, read_host_keys
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve.app import ServerThread
from plasmaboot.serve.machines import InventoryWatch
from plasmaboot.serve.nodelayer import (
    LAYER,
    PRIVATE_MARKERS,
    REPORTER,
    TOKEN_FILE,
    segment,
    token_files,
)
from plasmaboot.serve.nodes import add_initrd, client_address, token_segment

from conftest import make_keypair

INVENTORY = """\
[defaults]
profile = "worker"

[machines.w1]
mac = "52:54:00:12:34:01"
ssh_keys = ["ops.pub"]

[machines.w2]
mac = "52:54:00:12:34:02"
ipv4 = "10.20.0.12/24"

[machines.w3]
mac = "52:54:00:12:34:03"
"""
OTHER = "127.0.0.2"  # another address on this machine's loopback


@pytest.fixture
def root(tmp_path: Path) -> Path:
    source = tmp_path / "worker"
    source.mkdir()
    for name in (KERNEL, INITRD, MANIFEST):
        (source / name).write_bytes(name.encode())
    (source / IPXE).write_text(render_netboot_script("worker", ["console=ttyS0"]))
    publish_atomically(source, tmp_path / "artifacts", "worker", (KERNEL, INITRD, IPXE, MANIFEST))
    return tmp_path / "artifacts"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    make_keypair(tmp_path, "ops")
    path = tmp_path / "machines.toml"
    path.write_text(INVENTORY)
    return path


@pytest.fixture
def leases(tmp_path: Path) -> Path:
    """dnsmasq's lease file: w3 has 10.20.0.50 (not this machine's loopback)."""
    path = tmp_path / "dnsmasq.leases"
    path.write_text("1767225600 52:54:00:12:34:03 10.20.0.50 w3 01:52:54:00:12:34:03\n")
    return path


def start(root: Path, inventory: Path, tmp_path: Path, **options: object) -> ServerThread:
    watch = InventoryWatch(inventory, ProfileStore())
    return ServerThread(root, access_log=tmp_path / "access.log", inventory=watch, **options)  # type: ignore[arg-type]


@pytest.fixture
def server(root: Path, inventory: Path, tmp_path: Path, leases: Path) -> Iterator[ServerThread]:
    with start(root, inventory, tmp_path, leases=leases) as running:
        yield running


def request(
    server: ServerThread, method: str, path: str, body: bytes = b"", source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body or None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def node_url(server: ServerThread, mac: str, source: str = "127.0.0.1") -> str:
    status, script = request(
        server, "GET", "/boot.ipxe?mac=" + urllib.parse.quote(mac), source=source
    )
    assert status == 200
    lines = script.decode().splitlines()
    assert lines[-1] == "boot" and lines[-2].startswith("initrd --name node ")
    assert next(line for line in lines if line.startswith("kernel ")).endswith(" initrd=node")
    return lines[-2].split()[-1]


def token_of(url: str) -> str | None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return query["token"][0] if "token" in query else None


def wait_for_log(path: Path, needle: str) -> str:
    """The access log once it has `needle` (a request is logged after its response)."""
    deadline = time.monotonic() + 5
    while needle not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = path.read_text()
    assert needle in text, text
    return text


def host_keys(directory: Path) -> list[str]:
    """A node's host keys (made in a new directory under `directory` unless it is empty)."""
    if any(directory.iterdir()):
        directory = Path(tempfile.mkdtemp(dir=directory))
    keys = []
    for name in ("ssh_host_ed25519_key", "ssh_host_ecdsa_key"):
        kind = "ed25519" if "ed25519" in name else "ecdsa"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@node",
             "-f", str(directory / name)],
            check=True,
        )  # fmt: skip
        keys.append(" ".join((directory / f"{name}.pub").read_text().split()[:2]))
    return keys


def report_body(keys: list[str]) -> bytes:
    return "".join(f"{key} root@node\n" for key in keys).encode()


def test_a_machine_gets_its_segment_with_the_reporter_and_token(
    server: ServerThread, tmp_path: Path
) -> None:
    url = node_url(server, "52:54:00:12:34:01")
    token = token_of(url)
    assert url.startswith(f"{server.base_url}/node/w1.cpio?token=") and token
    status, data = request(server, "GET", urllib.parse.urlsplit(url).path + "?token=" + token)
    assert status == 200
    found = members(data)
    assert found[f"{LAYER}/etc/hostname"][1] == b"w1\n"
    assert found[f"{LAYER}/{TOKEN_FILE}"][1] == f"{token}\n".encode()
    assert f"{LAYER}/{REPORTER}" in found
    assert not any(marker in data for marker in PRIVATE_MARKERS)
    log = wait_for_log(tmp_path / "access.log", "/node/w1.cpio?token=<token> 200")
    assert token not in log  # never in the access log


def test_a_fetch_from_another_address_than_the_known_one_gets_no_token(
    server: ServerThread, tmp_path: Path
) -> None:
    # w2: static 10.20.0.12 in the inventory; w3: 10.20.0.50 in dnsmasq's leases
    for mac, name, known in (
        ("52:54:00:12:34:02", "w2", "10.20.0.12"),
        ("52:54:00:12:34:03", "w3", "10.20.0.50"),
    ):
        url = node_url(server, mac)
        assert url == f"{server.base_url}/node/{name}.cpio"
        status, data = request(server, "GET", f"/node/{name}.cpio")
        assert status == 200 and f"{LAYER}/{TOKEN_FILE}" not in members(data)
        assert f"{LAYER}/{REPORTER}" not in members(data)
        log = (tmp_path / "access.log").read_text()
        said = f"no host-key token for machine {name}: its script went to 127.0.0.1, "
        assert f"{said}its address is {known}" in log


def test_a_token_fetched_from_elsewhere_gives_no_reporter(server: ServerThread) -> None:
    url = node_url(server, "52:54:00:12:34:01")
    status, data = request(
        server,
        "GET",
        urllib.parse.urlsplit(url).path + "?" + urllib.parse.urlsplit(url).query,
        source=OTHER,
    )
    assert status == 200 and f"{LAYER}/{TOKEN_FILE}" not in members(data)


def test_a_report_is_recorded_once_and_a_replay_refused(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    token = token_of(node_url(server, "52:54:00:12:34:01"))
    keys = host_keys(tmp_path)
    path = f"/node/w1/hostkeys?token={token}"
    assert request(server, "POST", path, report_body(keys)) == (200, b"recorded\n")
    record = read_host_keys(inventory, "w1")
    assert record is not None and list(record.keys) == keys and record.address == "127.0.0.1"
    lines = known_hosts_lines(load_inventory(inventory, ProfileStore()))
    assert lines == [f"w1,127.0.0.1 {key}" for key in keys]
    status, body = request(server, "POST", path, report_body(keys[:1]))
    assert (status, body) == (409, b"token already used\n")
    assert read_host_keys(inventory, "w1") == record  # unchanged
    log = (tmp_path / "access.log").read_text()
    assert "refused: host-key report for w1 from 127.0.0.1: token already used" in log


def test_a_report_from_another_address_is_refused(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    token = token_of(node_url(server, "52:54:00:12:34:01"))
    status, _ = request(
        server,
        "POST",
        f"/node/w1/hostkeys?token={token}",
        report_body(host_keys(tmp_path)),
        source=OTHER,
    )
    assert status == 403 and read_host_keys(inventory, "w1") is None
    assert (
        f"refused: host-key report for w1 from {OTHER}: not from the address"
        in (tmp_path / "access.log").read_text()
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"x" * (17 << 10), 413),
        (b"ssh-ed25519 AAAAnotakey\n", 400),
        (b"", 400),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\n", 400),
    ],
)
def test_a_bad_report_is_refused_and_keeps_the_token(
    server: ServerThread, inventory: Path, tmp_path: Path, body: bytes, status: int
) -> None:
    token = token_of(node_url(server, "52:54:00:12:34:01"))
    assert request(server, "POST", f"/node/w1/hostkeys?token={token}", body)[0] == status
    assert read_host_keys(inventory, "w1") is None
    good = report_body(host_keys(tmp_path))
    assert request(server, "POST", f"/node/w1/hostkeys?token={token}", good)[0] == 200


def test_a_token_for_one_machine_cannot_report_for_another(
    server: ServerThread, tmp_path: Path
) -> None:
    token = token_of(node_url(server, "52:54:00:12:34:01"))
    status, body = request(
        server, "POST", f"/node/w3/hostkeys?token={token}", report_body(host_keys(tmp_path))
    )
    assert (status, body) == (403, b"token issued to another machine\n")
    assert (
        request(server, "POST", "/node/w1/hostkeys?token=madeup", report_body(host_keys(tmp_path)))[
            0
        ]
        == 403
    )


def test_a_token_expires(root: Path, inventory: Path, tmp_path: Path) -> None:
    with start(root, inventory, tmp_path, token_ttl=0.5) as server:
        token = token_of(node_url(server, "52:54:00:12:34:01"))
        time.sleep(0.7)
        status, body = request(
            server, "POST", f"/node/w1/hostkeys?token={token}", report_body(host_keys(tmp_path))
        )
    assert (status, body) == (403, b"token expired\n")


def test_an_unknown_machine_has_no_layer(server: ServerThread) -> None:
    assert request(server, "GET", "/node/nosuch.cpio")[0] == 404
    assert request(server, "GET", "/node/..%2Fetc.cpio")[0] in (400, 404)


def test_the_segment_is_cached_by_content(server: ServerThread, inventory: Path) -> None:
    first = request(server, "GET", "/node/w2.cpio")[1]
    assert request(server, "GET", "/node/w2.cpio")[1] == first
    # a key file edited: a new segment, not the cached one
    text = inventory.read_text().replace('ipv4 = "10.20.0.12/24"', 'ipv4 = "10.20.0.13/24"')
    inventory.write_text(text)
    os.utime(inventory, (time.time() + 5, time.time() + 5))
    assert b"10.20.0.13/24" in request(server, "GET", "/node/w2.cpio")[1]


def run_reporter(
    layer: Path, ssh_dir: Path, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    status = tmp_path / "run" / "hostkeys-report"
    environment = {
        **os.environ,
        "PLASMABOOT_NODE_DIR": str(layer / "etc/plasmaboot/node"),
        "PLASMABOOT_SSH_DIR": str(ssh_dir),
        "PLASMABOOT_REPORT_STATUS": str(status),
        "PLASMABOOT_REPORT_PAUSE": "0.1",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(layer / REPORTER)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, status.read_text() if status.exists() else ""


def test_the_node_reporter_reports_once_and_never_fails(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    url = node_url(server, "52:54:00:12:34:01")
    _, data = request(
        server, "GET", urllib.parse.urlsplit(url).path + "?token=" + str(token_of(url))
    )
    write_node(tmp_path / "node", data)
    layer = tmp_path / "node" / LAYER
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir()
    keys = host_keys(ssh_dir)
    proc, said = run_reporter(layer, ssh_dir, tmp_path)
    assert proc.returncode == 0 and "host keys reported" in said, proc.stdout + proc.stderr
    record = read_host_keys(inventory, "w1")
    assert record is not None and sorted(record.keys) == sorted(keys)
    again, said = run_reporter(layer, ssh_dir, tmp_path)  # a replay: refused, not retried
    assert again.returncode == 0 and "report refused (HTTP 409" in said
    assert again.stdout.startswith("<4>")  # a warning in the journal


def test_the_reporter_gives_up_quietly_when_the_server_is_gone(
    root: Path, inventory: Path, tmp_path: Path
) -> None:
    with start(root, inventory, tmp_path) as server:
        url = node_url(server, "52:54:00:12:34:01")
        data = request(
            server, "GET", urllib.parse.urlsplit(url).path + "?token=" + str(token_of(url))
        )[1]
    write_node(tmp_path / "node", data)
    layer = tmp_path / "node" / LAYER
    ssh_dir = tmp_path / "etc-ssh"
    ssh_dir.mkdir()
    host_keys(ssh_dir)
    proc, said = run_reporter(layer, ssh_dir, tmp_path, PLASMABOOT_REPORT_ATTEMPTS="3")
    assert proc.returncode == 0
    assert re.fullmatch(r"plasmaboot: host keys not reported: no answer after 3 attempts\n", said)


def test_the_token_archive_from_its_template_is_the_archive_of_the_token() -> None:
    for value in ("x" * 32, "AAAA" + "b" * 28, "A" * 16 + "_-" * 8):
        assert token_segment(value) == segment(token_files(value))


def test_a_report_that_arrives_in_pieces_is_read_whole(
    server: ServerThread, inventory: Path, tmp_path: Path
) -> None:
    token = token_of(node_url(server, "52:54:00:12:34:01"))
    body = report_body(host_keys(tmp_path))
    head = (
        f"POST /node/w1/hostkeys?token={token} HTTP/1.0\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body[:40])
        time.sleep(0.3)
        sock.sendall(body[40:])
        answer = sock.makefile("rb").readline()
    assert answer.split()[1] == b"200", answer
    record = read_host_keys(inventory, "w1")
    assert record is not None and len(record.keys) == 2


def test_the_node_initrd_is_added_only_where_the_kernel_line_has_room() -> None:
    script = "#!ipxe\n# plasmaboot: w\nkernel http://s/k initrd=initrd a=1\ninitrd --name initrd http://s/i\nboot\n"
    assert add_initrd(script, "http://s/node/w.cpio") == (
        "#!ipxe\n# plasmaboot: w\nkernel http://s/k initrd=initrd a=1 initrd=node\n"
        "initrd --name initrd http://s/i\ninitrd --name node http://s/node/w.cpio\nboot\n"
    )
    # 2045 characters: room for the set's line, not for " initrd=node" as well
    full = script.replace("a=1", "p0=" + "x" * 1000 + " p1=" + "x" * 1021)
    render_netboot_script("w", ["p0=" + "x" * 1000, "p1=" + "x" * 1021])  # fits without
    with pytest.raises(FormatError, match="command line"):
        add_initrd(full, "http://s/node/w.cpio")


@pytest.mark.parametrize(
    ("remote", "address"),
    [
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("10.0.0.5", "10.0.0.5"),
        ("fd77::2", "fd77::2"),
        (None, "-"),
    ],
)
def test_a_client_is_named_as_the_inventory_writes_addresses(
    remote: str | None, address: str
) -> None:
    request = cast(web.Request, SimpleNamespace(remote=remote))
    assert client_address(request) == address
