"""serve.nodelayer: the files of a machine's per-node layer and its cpio segment. Every
value that reaches a file was checked by inventory.load (shown here per file: a hostile
value never loads) and is checked again here; no segment ever holds a private key."""

from __future__ import annotations

import json
import stat
import textwrap
from pathlib import Path

import pytest

from node_layers import members
from plasmaboot.errors import UserError
from plasmaboot.inventory.load import load_inventory
from plasmaboot.inventory.model import Machine
from plasmaboot.profiles.store import ProfileStore
from plasmaboot.serve.nodelayer import (
    LAYER,
    PRIVATE_MARKERS,
    REPORTER,
    STATIC_NETWORK,
    TOKEN_FILE,
    NodeLayerError,
    node_files,
    reporter_files,
    segment,
    server_address,
    token_files,
)

from conftest import make_keypair

SET_ID = "worker-0123456789ab"


def load_machine(directory: Path, table: str) -> Machine:
    path = directory / "machines.toml"
    path.write_text(textwrap.dedent(table))
    inventory = load_inventory(path, ProfileStore())
    (machine,) = inventory.machines.values()
    return machine


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    make_keypair(tmp_path, "ops")
    return load_machine(
        tmp_path,
        """
        [machines.cp1]
        mac = ["52:54:00:12:34:01", "52:54:00:12:34:02"]
        profile = "worker"
        ipv4 = "10.20.0.11/24"
        hostname = "cp1.lab"
        ssh_keys = ["ops.pub"]
        labels = { rack = "r1 \\"quoted\\" \\\\ back" }
        """,
    )


def test_the_segment_holds_the_machines_own_files(machine: Machine, tmp_path: Path) -> None:
    data = segment(node_files(machine, SET_ID))
    found = members(data)
    assert len(data) <= 4096  # a few KiB
    assert found[f"{LAYER}/etc/hostname"] == (stat.S_IFREG | 0o644, b"cp1.lab\n")
    keys = found[f"{LAYER}/etc/plasmaboot/node/authorized_keys"][1].decode()
    assert keys.split() == (tmp_path / "ops.pub").read_text().split()
    node = json.loads(found[f"{LAYER}/etc/plasmaboot/node/node.json"][1])
    assert node == {
        "name": "cp1", "hostname": "cp1.lab", "profile": "worker", "variant": None,
        "label": "worker", "set": SET_ID, "labels": {"rack": 'r1 "quoted" \\ back'},
    }  # fmt: skip
    network = found[f"{LAYER}/{STATIC_NETWORK}"][1].decode()
    assert "MACAddress=52:54:00:12:34:01 52:54:00:12:34:02\n" in network
    assert "Address=10.20.0.11/24\n" in network and "DHCP=no\n" in network
    # only regular files and directories under the layer, modes 0644/0755
    for name, (mode, _) in found.items():
        assert name == "layers" or name.startswith(f"{LAYER}"), name
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), name
        assert stat.S_IMODE(mode) in (0o644, 0o755), name
        assert ".." not in name.split("/")


def test_no_static_address_no_network_file_no_keys_no_keys_file(tmp_path: Path) -> None:
    plain = load_machine(tmp_path, '[machines.w1]\nmac = "52:54:00:12:34:01"\nprofile = "worker"')
    assert set(node_files(plain, SET_ID)) == {"etc/hostname", "etc/plasmaboot/node/node.json"}


def test_the_reporter_and_token(machine: Machine) -> None:
    files = reporter_files(machine, server_address("http://10.20.0.1:8080"))
    token = "A" * 32
    data = segment(files) + segment(token_files(token))
    found = members(data)
    assert found[f"{LAYER}/{TOKEN_FILE}"] == (stat.S_IFREG | 0o600, f"{token}\n".encode())
    script = found[f"{LAYER}/{REPORTER}"]
    assert stat.S_IMODE(script[0]) == 0o755
    assert b"SERVER_HOST='10.20.0.1'\nSERVER_PORT='8080'\n" in script[1]
    assert b"REPORT_PATH='/node/cp1/hostkeys'\n" in script[1]
    unit = found[f"{LAYER}/etc/systemd/system/plasmaboot-hostkeys-report.service"][1]
    assert b"Type=simple" in unit and b"ExecStart=/bin/bash /etc/plasmaboot/node/" in unit
    wants = found[f"{LAYER}/etc/systemd/system/multi-user.target.d/90-plasmaboot-node.conf"]
    assert b"Wants=plasmaboot-hostkeys-report.service" in wants[1]


@pytest.mark.parametrize("token", ["short", "a" * 32 + "\n", "a" * 32 + "'", "../" + "a" * 30])
def test_only_a_token_shaped_value_is_written(token: str) -> None:
    with pytest.raises(NodeLayerError):
        token_files(token)


def test_every_segment_is_scanned_for_private_keys(machine: Machine, tmp_path: Path) -> None:
    all_files = {
        **node_files(machine, SET_ID),
        **reporter_files(machine, server_address("http://10.20.0.1:8080")),
        **token_files("B" * 32),
    }
    data = segment(all_files)
    assert not any(marker in data for marker in PRIVATE_MARKERS)
    private = (tmp_path / "ops").read_bytes()  # the private half, if it were ever added
    with pytest.raises(NodeLayerError, match="private key"):
        segment({**all_files, "etc/x": (private, 0o644)})


def test_a_key_file_edited_into_a_private_key_after_loading_is_refused(
    machine: Machine, tmp_path: Path
) -> None:
    (tmp_path / "ops.pub").write_bytes((tmp_path / "ops").read_bytes())
    with pytest.raises(Exception, match="private key"):
        node_files(machine, SET_ID)


# Per file: the hostile values that would reach it never load.
HOSTILE = {
    "etc/hostname": 'hostname = "cp1\\nevil"',
    "etc/hostname (spaces)": 'hostname = "cp1 evil"',
    "node.json (label value)": 'labels = { rack = "r1\\u0000\\n" }',
    "node.json (label key)": 'labels = { "Rack\\n" = "r1" }',
    "node.json (profile)": 'profile = "../../etc"',
    "authorized_keys": 'ssh_keys = ["ops"]',  # the private half
    "authorized_keys (outside)": 'ssh_keys = ["../../etc/passwd"]',
    "static network": 'ipv4 = "10.20.0.11/24\\nDNS=1.1.1.1"',
    "static network (mac)": 'mac = "52:54:00:12:34:01\\n[Network]"',
}


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_value_never_loads(tmp_path: Path, line: str) -> None:
    make_keypair(tmp_path, "ops")
    table = {"mac": '"52:54:00:12:34:01"', "profile": '"worker"'}
    key = line.split(" = ", 1)[0].strip('"')
    table[key] = line.split(" = ", 1)[1]
    text = "[machines.cp1]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
    with pytest.raises(UserError):
        load_machine(tmp_path, text)


def test_a_machine_made_in_code_gets_the_same_rule() -> None:
    bad = Machine(
        name="cp1", macs=("52:54:00:12:34:01",), profile="worker", variant=None,
        hostname="cp1\nevil", ipv4=None, kernel_params=(), ssh_keys=(), labels={},
    )  # fmt: skip
    with pytest.raises(NodeLayerError):
        node_files(bad, SET_ID)


@pytest.mark.parametrize(
    "url",
    ["http://a;reboot:80", "http://10.0.0.1:80/p'ath", "ftp://10.0.0.1", "http://h/$(x)"],
)
def test_the_reporters_server_url_is_checked(url: str) -> None:
    with pytest.raises(NodeLayerError):
        server_address(url)


def test_server_address_for_bash() -> None:
    assert server_address("http://[fd77::1]:8080/pb").host_header == "[fd77::1]:8080"
    assert server_address("http://[fd77::1]:8080/pb").host == "fd77::1"
    assert server_address("http://boot.lab").port == 80
    assert server_address("https://boot.lab/x/").path == "/x"


def test_a_static_address_keeps_the_profiles_mtu(machine: Machine) -> None:
    network = node_files(machine, SET_ID, mtu=9000)[STATIC_NETWORK][0].decode()
    assert "[Link]\nMTUBytes=9000\n" in network
    assert "MTUBytes" not in node_files(machine, SET_ID)[STATIC_NETWORK][0].decode()
    with pytest.raises(NodeLayerError):
        node_files(machine, SET_ID, mtu=10**6)


@pytest.mark.parametrize("name", ['"a;reboot"', '"A1"', '"x/../y"', '"n\\nx"'])
def test_a_hostile_machine_name_never_loads(tmp_path: Path, name: str) -> None:
    """The machine's name reaches node.json and the reporter's URL path."""
    with pytest.raises(UserError):
        load_machine(tmp_path, f'[machines.{name}]\nmac = "52:54:00:12:34:01"\nprofile = "worker"')
